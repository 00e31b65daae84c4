# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NATS side of the executor: a NATS micro service whose endpoints take jobs.

Every request is answered: ``accepted`` (then the job's events stream to the caller's ``reply_to``) or a
structured error. Nothing a caller sends can crash the service. A request is parsed into its typed message
(wire/messages.py), the host it runs on is chosen once (``Executor.host_for``), and its operation's handler
does the work through that host (hosts/) and the host-independent job code (jobs.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import re
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Dict, List, Optional, Set, Tuple, cast

from nats import micro

from natsops_executor import __version__
from natsops_executor import bklite
from natsops_executor import jobs
from natsops_executor import payloads
from natsops_executor import transfer
from natsops_executor.config import Config
from natsops_executor.hosts.base import Host
from natsops_executor.hosts.local import LocalHost
from natsops_executor.audit import AuditTrail
from natsops_executor.guard import JobGuard
from natsops_executor.trust import ReplySigner, RequestTrust, binding_of
from natsops_executor.warm import WarmPool, warm_stats

try:
    from natsops_executor import sshpool
    from natsops_executor.hosts.ssh import SSHHost
    SSH_UNAVAILABLE = None
except ImportError as _exc:  # paramiko is a dependency of the wheel; a bare copy may lack it: agent mode only
    SSH_UNAVAILABLE = "SSH mode is unavailable on this executor (%s); install paramiko" % _exc
from natsops_executor._wire import connect as wire_connect
from natsops_executor._wire import signing
from natsops_executor._wire.contract import (
    E_ACCOUNT, E_BAD_REQUEST, E_BUSY, E_CHECKSUM_MISMATCH, E_EXPIRED, E_INTERRUPTED, E_INTERNAL, E_SPAWN, E_TOO_LARGE, H_KIND, KIND_ACCEPTED, KIND_ERROR,
    KIND_REQUEST, KIND_RESULT, OP_EXEC, OP_FETCH, OP_PUT, OP_TRANSFER, OPERATIONS, PROTOCOL_VERSION, QUEUE_GROUP,
    SERVICE_NAME, WireError, chunk_size, error_message, executor_metadata, pack, subject, unpack,
)
from natsops_executor._wire.messages import (
    Accepted, Digest, ExecRequest, ExecutorRef, FetchRequest, PutRequest, Request, Target, TransferRequest,
    parse_request,
)
from natsops_executor._wire.streams import StreamReceiver, StreamSender

log = logging.getLogger("natsops_executor")

Fill = Callable[[jobs.Write], Awaitable[None]]


def service_version(version: str) -> str:
    """The package's PEP 440 version as the semantic version NATS micro services require: the release padded to
    X.Y.Z, anything after it as build metadata (0.1.0.post900 -> 0.1.0+post900, 1.2 -> 1.2.0). Discovery still
    reports the package's own version, in the service metadata."""
    match = re.match(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?(.*)$", version)
    if not match:
        return "0.0.0+" + (re.sub(r"[^0-9A-Za-z-]+", ".", version).strip(".") or "unknown")
    rest = re.sub(r"[^0-9A-Za-z-]+", ".", match.group(4)).strip(".")
    return "%s.%s.%s" % (match.group(1), match.group(2) or 0, match.group(3) or 0) + ("+" + rest if rest else "")


class Outcome:
    """How a job ended, for the counters: set ``ok`` when it succeeded."""

    ok = False


class JobBook:
    """Job accounting for both servers (ours and BK-Lite's): every request's work runs as its own task (never in
    the subscription callback), at most ``max_jobs`` run at once (more wait), and each one is counted."""

    def __init__(self, max_jobs: int, max_waiting: int = 128) -> None:
        self.max_jobs = max_jobs
        self.max_waiting = max_waiting
        self._slots = asyncio.Semaphore(max_jobs)
        self._tasks: Set[asyncio.Future] = set()
        self.running = 0
        self.waiting = 0
        self.completed = 0
        self.failed = 0
        self.refused = 0

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a request's work in its own task; finish() waits for it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def handler(self, serve: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], Awaitable[None]]:
        """A NATS micro endpoint handler that starts ``serve(msg)`` as a job (the subscription never waits)."""
        async def handle(msg: Any) -> None:
            self.start(serve(msg))
        return handle

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Outcome]:
        """A slot for one job: waits while ``max_jobs`` run, refused with ``busy`` when ``max_waiting`` already wait
        (a flood never becomes an unbounded queue); counted completed if the block set ``ok``."""
        if self._slots.locked() and self.waiting >= self.max_waiting:
            self.refused += 1
            raise WireError(E_BUSY, "the executor is busy: %d jobs run and %d wait, the most it takes; try again"
                            % (self.running, self.waiting))
        outcome = Outcome()
        try:
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
            self.running += 1
            try:
                yield outcome
            finally:
                self.running -= 1
                self._slots.release()
        finally:
            if outcome.ok:
                self.completed += 1
            else:
                self.failed += 1

    async def finish(self, grace: float) -> None:
        """Give running jobs ``grace`` seconds, then cancel what remains."""
        if not self._tasks:
            return
        log.info("waiting up to %.0f s for %d running job(s)", grace, len(self._tasks))
        _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    def stats(self) -> Dict[str, int]:
        return {"running": self.running, "waiting": self.waiting, "max_jobs": self.max_jobs, "completed": self.completed,
                "failed": self.failed, "busy": self.refused}


class _Seen:
    """A job this executor took: until when its caller waits, and the reply it was sent (its acceptance, or the
    error that ended it before acceptance), once there is one."""

    __slots__ = ("expires", "reply")

    def __init__(self, expires: Optional[float]) -> None:
        self.expires = expires
        self.reply: Optional[Tuple[Dict[str, str], bytes]] = None


class RecentJobs:
    """Job ids this executor took lately. A caller that lost the acceptance (its connection moved to another NATS
    server) sends the same job again; the copy never starts it a second time: it gets the acceptance again, or,
    while the job waits for a slot, only extends how long the caller waits."""

    def __init__(self, limit: int = 10000) -> None:
        self.limit = limit
        self._jobs: "collections.OrderedDict[Tuple[str, str], _Seen]" = collections.OrderedDict()

    @staticmethod
    def key(req: Request) -> Tuple[str, str]:
        """A job is its id and where its events go: a copy sent again has both; another caller's request that
        happens to reuse an id does not."""
        return req.id, req.reply_to

    def get(self, req: Request) -> Optional[_Seen]:
        return self._jobs.get(self.key(req))

    def add(self, req: Request) -> _Seen:
        seen = self._jobs[self.key(req)] = _Seen(req.expires)
        while len(self._jobs) > self.limit:
            self._jobs.popitem(last=False)
        return seen


class _Job:
    """One request of our protocol: its NATS message, typed request, event stream and (uploads) byte stream."""

    def __init__(self, nc: Any, msg: Any, req: Request, attachment: bytes, executor: ExecutorRef,
                 sign: ReplySigner, seen: _Seen) -> None:
        self.nc = nc
        self.seen = seen
        self.msg = msg
        self.req = req
        self.attachment = attachment
        self.executor = executor
        self.sign = sign
        self.sender = StreamSender(nc, req.reply_to, sign=sign)
        self.receiver: Optional[StreamReceiver] = None
        self.accepted = False
        self.chunk = chunk_size(nc.max_payload)
        self.info: Dict[str, Any] = {}  # what the handler reports for the audit record (rc, bytes)

    async def accept(self, **extra: Any) -> None:
        """Reply ``accepted``: from now on the caller follows the job's event stream."""
        doc = Accepted(v=PROTOCOL_VERSION, id=self.req.id, executor=self.executor, **extra)
        headers, body = pack(KIND_ACCEPTED, doc.to_dict())
        headers.update(self.sign(body))
        self.seen.reply = (headers, body)
        await self.msg.respond(body, headers=headers)
        self.accepted = True

    async def accept_upload(self, size: int) -> Fill:
        """Accept the request with its ``size`` bytes inline (the attachment) or coming as an upload stream;
        returns ``fill(write)``, which passes them all to ``write``."""
        inline = self.attachment
        if inline or size == 0:
            if len(inline) != size:
                raise WireError(E_BAD_REQUEST, "inline data is %d bytes but %d were announced" % (len(inline), size))
            await self.accept()

            async def fill_inline(write: jobs.Write) -> None:
                write(inline)
            return fill_inline
        receiver = self.receiver = await StreamReceiver(self.nc).start()
        await self.accept(upload=receiver.subject)

        async def fill_upload(write: jobs.Write) -> None:
            await jobs.receive_upload(receiver, size, self.req.keepalive, write)
        return fill_upload

    async def fail(self, error: WireError) -> None:
        """Report an error on the job stream; if it was never accepted, reply to the request instead."""
        if not self.accepted:
            self.seen.reply = await reply_error(self.msg, error, self.sign)
            return
        try:
            await self.sender.send(KIND_ERROR, error.to_dict())
            await self.sender.drain()
        except WireError as exc:
            log.info("could not report the error to the caller: %s", exc)
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("could not report the error to the caller: %r", exc)

    async def close(self) -> None:
        await self.sender.close()
        if self.receiver is not None:
            await self.receiver.close()


def account_mismatch(account: str, run_as: str) -> str:
    """Why an exec whose caller expects another account (run_as) is refused."""
    return ("commands start as account %r here, not as %r as the caller expects (its remote_user); nothing was run. "
            "Set the connection's remote_user (ansible_user) to %r; become then escalates from it"
            % (account, run_as, account))


def claimed_signer(msg: Any) -> Optional[str]:
    """The signer a refused request names (not verified: for the audit record only)."""
    return ((msg.headers or {}).get(signing.H_SIGNER) or "")[:64] or None


def reply_subject(msg: Any) -> str:
    """Where a request's reply goes (nats micro keeps the NATS message private)."""
    return getattr(getattr(msg, "_msg", msg), "reply", "") or ""


async def refuse_delivery(msg: Any) -> bool:
    """True (and the message dropped) unless it was published directly to our subject by a caller waiting for the
    reply: a JetStream delivery (reply subject ``$JS.ACK...``) merely replays stored bytes, whoever stored them, and
    is ended with +TERM so the server stops redelivering it; a message without a reply subject has no caller."""
    reply = reply_subject(msg)
    if reply and not reply.startswith("$"):
        return False
    log.warning("refused a message on %s that no caller sent directly (reply subject %r): %s", msg.subject, reply,
                "a JetStream delivery; terminated" if reply.startswith("$JS.ACK.") else "not answered")
    if reply.startswith("$JS.ACK."):
        try:
            await msg.respond(b"+TERM")
        except Exception as exc:  # pylint: disable=broad-except
            log.info("could not terminate the delivery: %s", exc)
    return True


async def reply_error(msg: Any, error: WireError, sign: Optional[ReplySigner] = None) -> Tuple[Dict[str, str], bytes]:
    """Answer a request with an error reply, signed when the request is known (never raises); returns the reply."""
    headers, body = error_message(error.code, error.message, error.details)
    if sign is not None:
        headers.update(sign(body))
    try:
        await msg.respond(body, headers=headers)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("could not send an error reply: %s", exc)
    return headers, body


class Executor:
    """The natsops-executor service: one NATS connection, one NATS micro service whose endpoints take the jobs of
    every configured instance id (and BK-Lite's subjects with ``bklite_compat``), each run on the host its request
    names: this one (LocalHost) or an SSH target (SSHHost, through the connection pool)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.nc: Any = None
        self.heartbeat: Any = None
        self.service: Any = None
        self.book = JobBook(cfg.max_jobs, cfg.max_waiting)
        self.trust = RequestTrust(cfg)
        self.recent = RecentJobs()
        self.reply_key = cfg.result_key()
        self.audit: Any = None
        self.guard = JobGuard()
        self.warm = WarmPool(self.guard) if cfg.warm else None
        # zone mode: one warm runner per target connection (warm_remote.py), as many as pooled connections
        self.warm_ssh = WarmPool(max_parents=cfg.ssh_pool_size) if cfg.warm else None
        self.local = LocalHost(self.guard, self.warm)
        self.payloads = payloads.PayloadCache(cfg.payload_cache)
        self.ssh: Any = None  # SSH mode: the connection pool, created at start
        self._handlers: Dict[str, Callable[[_Job, Host], Awaitable[None]]] = {
            OP_EXEC: self._exec, OP_PUT: self._put, OP_FETCH: self._fetch, OP_TRANSFER: self._transfer}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.cfg
        self.guard.start()
        if SSH_UNAVAILABLE:
            log.warning("%s", SSH_UNAVAILABLE)
        else:
            self.ssh = sshpool.SSHPool(cfg.ssh_settings(), max_threads=cfg.max_jobs * 2 + 4)
            self.ssh.start()
            if cfg.bklite_compat and not cfg.ssh_host_key_policy:
                log.warning("SSH HOST KEYS ARE LEARNT ON FIRST CONTACT (--bklite-compat without --ssh-host-key-policy: "
                            "accept-new, so that hosts added in BK-Lite work at once): the first key a host offers is "
                            "trusted and recorded in %s, a changed key is refused; fill known_hosts and pass "
                            "--ssh-host-key-policy strict to verify every host", cfg.ssh_known_hosts or "~/.ssh/known_hosts")
            if cfg.host_key_policy() == "ignore":
                log.warning("SSH HOST KEYS ARE NOT VERIFIED (ssh_host_key_policy: ignore): anyone on the path to a "
                            "target host can impersonate it; use 'strict' or 'accept-new'")
        for line in self.trust.describe():
            (log.info if self.trust.required else log.warning)("%s", line)
        if self.reply_key is not None:
            log.info("replies are signed with %s (callers pin it for these instance ids in known_executors)",
                     self.reply_key.public_key)
        else:
            log.warning("replies are not signed: no --signing-key (nor --nkey or --creds) is configured, so callers "
                        "cannot tell this executor's results from forged ones")
        log.info("connecting to NATS: %s", wire_connect.describe(cfg.nats_options(), wire_connect.SERVICE))
        self.nc = await wire_connect.connect(
            cfg.nats_options(), "natsops-executor %s" % cfg.name, 5.0, wire_connect.SERVICE, error_cb=self._on_error,
            disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect)
        self.service = await micro.add_service(
            self.nc, name=SERVICE_NAME, version=service_version(__version__), queue_group=QUEUE_GROUP,
            description="natsops.fleet executor on %s" % cfg.name,
            metadata=executor_metadata(cfg.namespace, cfg.instances, cfg.name, __version__, ssh=self.ssh is not None,
                                       bklite=cfg.bklite_compat, account=self.local.account, warm=cfg.warm,
                                       payload_cache=cfg.payload_cache > 0),
            stats_handler=self._stats)
        self.audit = AuditTrail(self.nc, cfg.namespace, cfg.name)
        self.audit.start()
        index = 0
        for inst in cfg.instances:
            for op in OPERATIONS:
                index += 1
                subj = subject(cfg.namespace, op, inst)
                await self.service.add_endpoint(
                    name="%s-%d" % (op, index), subject=subj, handler=self.book.handler(functools.partial(self._serve, op)),
                    metadata={"instance": inst, "op": op})
                log.info("serving %s (instance %s, queue group %s)", subj, inst, QUEUE_GROUP)
        if cfg.bklite_compat:
            compat = bklite.CompatServer(self.nc, self.host_for, self.book, cfg.instances, self.audit)
            await compat.add_endpoints(self.service, index)
        await self.nc.flush()
        if cfg.register:
            from natsops_executor.probe import Heartbeat  # pylint: disable=import-outside-toplevel
            self.heartbeat = Heartbeat(self.nc, cfg)
            await self.heartbeat.beat()
            self.heartbeat.start()
        log.info("natsops-executor %s ready: %d instance id(s) on %s, max %d jobs, protocol %d, service %s",
                 __version__, len(cfg.instances), self.nc.connected_url.netloc if self.nc.connected_url else "?",
                 cfg.max_jobs, PROTOCOL_VERSION, self.service.id)

    async def stop(self) -> None:
        """Lame duck, like nats-server's: stop taking requests at once (other executors of the instance ids take
        the next ones), start those already delivered to this one, give running jobs ``shutdown_grace`` seconds,
        then end the rest (their callers get ``interrupted``)."""
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        if self.service is not None:
            # drain, not unsubscribe: a request already delivered here is taken, never silently dropped
            for endpoint in getattr(self.service, "_endpoints", []):
                subscription = getattr(endpoint, "_subscription", None)
                if subscription is not None:
                    with contextlib.suppress(Exception):
                        await subscription.drain()
            with contextlib.suppress(Exception):
                await self.service.stop()
        await self.book.finish(self.cfg.shutdown_grace)
        for pool in (self.warm, self.warm_ssh):
            if pool is not None:
                await pool.close()
        if self.audit is not None:
            await self.audit.stop()
        if self.ssh is not None:
            await self.ssh.close()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.drain()
        self.guard.stop()
        log.info("natsops-executor stopped")

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS error: %s", exc or type(exc).__name__)

    async def _on_disconnect(self) -> None:
        log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnect(self) -> None:
        log.info("reconnected to NATS at %s", self.nc.connected_url.netloc if self.nc.connected_url else "?")

    def _stats(self, _endpoint_stats: Any) -> Dict[str, Any]:
        stats: Dict[str, Any] = dict(self.book.stats(), loadavg=list(os.getloadavg()), **self.payloads.stats())
        if self.ssh is not None:
            stats.update(self.ssh.stats())
        if self.audit is not None:
            stats.update(self.audit.stats())
        if self.warm is not None and self.warm_ssh is not None:
            stats.update(warm_stats(self.warm, self.warm_ssh))
        return stats

    # ------------------------------------------------------------ requests

    def host_for(self, target: Optional[Target]) -> Host:
        """The host a request runs on: this one, or (SSH mode) its target through the connection pool."""
        if target is None:
            return self.local
        if self.ssh is None:
            raise WireError(E_SPAWN, SSH_UNAVAILABLE or "SSH mode is not running")
        return SSHHost(self.ssh, target, self.warm_ssh)

    def _check_expiry(self, expires: Optional[float]) -> None:
        """A request whose caller has given up is never started (``expires``, with the configured clock skew)."""
        now = time.time()
        if expires is not None and now > expires + self.cfg.clock_skew:
            raise WireError(E_EXPIRED, "the request expired %.1f s ago (executor clock %s, allowed clock skew %g s): its "
                            "caller no longer waits for it, so it was not started; if this repeats, the clocks of the "
                            "controller and this executor disagree (check NTP)" % (
                                now - expires, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                                self.cfg.clock_skew), {"expires": expires, "now": now})

    def _ref(self) -> ExecutorRef:
        return ExecutorRef(name=self.cfg.name, service_id=self.service.id, version=__version__)

    async def _serve(self, op: str, msg: Any) -> None:
        started = time.monotonic()
        if await refuse_delivery(msg):
            return
        req: Optional[Request] = None
        signer: Optional[str] = None
        instance = msg.subject[len(self.cfg.namespace) + len(op) + 2:]
        try:
            signer = self.trust.signer_of(instance, msg.subject, msg.data, msg.headers)
            if msg.headers and msg.headers.get(H_KIND) not in (None, KIND_REQUEST):
                raise WireError(E_BAD_REQUEST, "expected a request message")
            doc, attachment = unpack(msg.headers, msg.data)
            req = parse_request(op, doc)
            if req.reply_to.startswith(self.cfg.namespace + "."):
                raise WireError(E_BAD_REQUEST, "field 'reply_to' must not be a subject of the fleet itself (%s.>)"
                                % self.cfg.namespace)
            self._check_expiry(req.expires)
            self.trust.check_fresh(req, signer)
            host = self.host_for(req.target)
            if isinstance(req, ExecRequest) and req.run_as is not None and req.run_as != host.account:
                raise WireError(E_ACCOUNT, account_mismatch(host.account, req.run_as),
                                {"account": host.account, "run_as": req.run_as})
            seen = self.recent.get(req)
        except WireError as exc:
            log.warning("%s request on %s rejected: %s", op, msg.subject, exc)
            self.audit.record(instance, op, "refused", req, signer=signer or claimed_signer(msg), code=exc.code,
                              message=exc.message)
            await reply_error(msg, exc, ReplySigner(self.reply_key, req.binding() if req else binding_of(msg.data, msg.headers)))
            return
        except Exception as exc:  # pylint: disable=broad-except
            log.exception("unexpected error while parsing a request on %s", msg.subject)
            self.audit.record(instance, op, "refused", req, code=E_INTERNAL)
            await reply_error(msg, WireError(E_INTERNAL, "executor failed to parse the request: %r" % exc))
            return

        if seen is not None:  # the same job again: its caller lost our acceptance; never run it twice
            if req.expires is not None and (seen.expires is None or req.expires > seen.expires):
                seen.expires = req.expires
            if seen.reply is not None:
                with contextlib.suppress(Exception):
                    await msg.respond(seen.reply[1], headers=seen.reply[0])
            log.info("%s %s sent again: %s", op, req.id, "its reply repeated" if seen.reply else "it waits for a slot")
            return
        seen = self.recent.add(req)
        job = _Job(self.nc, msg, req, attachment, self._ref(), ReplySigner(self.reply_key, req.binding()), seen)
        failure: Optional[WireError] = None
        try:
            async with self.book.run() as outcome:
                self._check_expiry(seen.expires)  # waiting for a slot took time (a copy may have extended it)
                await job.sender.start()
                await self._handlers[op](job, host)
                await job.sender.drain()
                outcome.ok = True
        except WireError as exc:
            log.info("%s %s failed: %s", op, req.id, exc)
            failure = exc
            await job.fail(exc)
        except asyncio.CancelledError:
            failure = WireError(E_INTERRUPTED, "the executor stopped (it was restarted or shut down) before the job "
                                               "ended; its processes were killed after %.0f s of drain time"
                                % self.cfg.shutdown_grace)
            await job.fail(failure)
            raise
        except Exception as exc:  # pylint: disable=broad-except
            log.exception("%s %s crashed", op, req.id)
            failure = WireError(E_INTERNAL, "executor error: %r" % exc)
            await job.fail(failure)
        finally:
            await job.close()
            duration = round(time.monotonic() - started, 3)
            verdict = "ok" if failure is None else ("refused" if not job.accepted else "failed")
            self.audit.record(instance, op, verdict, req, signer=signer, duration=duration,
                              code=failure.code if failure else None, message=failure.message if failure else None,
                              **job.info)
            log.debug("%s %s finished in %.3f s", op, req.id, duration)

    async def _exec(self, job: _Job, host: Host) -> None:
        req = cast(ExecRequest, job.req)
        announced = req.stdin or Digest.of(job.attachment)
        cached = self.payloads.take(req.stdin_blobs)  # payload_missing before acceptance: nothing ran or was uploaded
        fill = await job.accept_upload(req.sent_size() if req.stdin else announced.size)
        parts: List[bytes] = []
        await fill(parts.append)
        # the whole stdin (what was sent plus the cached ranges) is checked against the signed request's summary
        data = payloads.assemble(req.stdin_blobs, b"".join(parts), cached)
        if Digest.of(data) != announced:
            raise WireError(E_CHECKSUM_MISMATCH, "stdin sha256 does not match the announced value; nothing was run")
        self.payloads.keep(req.stdin_blobs, data)
        info: Dict[str, Any] = {}
        result = await jobs.run_command(host, req, data, job.sender, job.chunk, info)
        job.info = dict(info, rc=result.rc, bytes_in=len(data), bytes_out=result.stdout.size + result.stderr.size)
        log.info("exec %s%s rc=%s out=%d err=%d %.3fs%s", req.id, host.where, result.rc, result.stdout.size,
                 result.stderr.size, result.duration, " warm" if info.get("warm") else "")

    async def _put(self, job: _Job, host: Host) -> None:
        req = cast(PutRequest, job.req)
        if len(job.attachment) > req.size:
            raise WireError(E_TOO_LARGE, "inline data is larger than the announced size")
        landing = await host.landing(req.path)
        try:
            summary = await jobs.receive_file(landing, req.summary(), req.mode, await job.accept_upload(req.size))
        finally:
            await landing.discard()
        await job.sender.send(KIND_RESULT, summary.to_dict())
        job.info = {"bytes_in": summary.size, "sha256": summary.sha256}
        log.info("put %s%s %s %d bytes", req.id, host.where, req.path, summary.size)

    async def _fetch(self, job: _Job, host: Host) -> None:
        req = cast(FetchRequest, job.req)
        source = await host.open_file(req.path)
        try:
            await job.accept(size=source.size, mode=source.mode)
            summary = await jobs.send_file(source, job.sender, job.chunk)
        finally:
            await source.close()
        job.info = {"bytes_out": summary.size, "sha256": summary.sha256}
        log.info("fetch %s%s %s %d bytes", req.id, host.where, req.path, summary.size)

    async def _transfer(self, job: _Job, host: Host) -> None:
        req = cast(TransferRequest, job.req)
        await job.accept()
        result = await transfer.run_transfer(host, self.nc, req, job.sender)
        job.info = {"changed": result.changed, "sha256": result.sha256}
        source = req.source
        log.info("transfer %s%s %s -> %s: %s%s", req.id, host.where,
                 "object %s/%s" % (source.bucket, source.object) if source.object else source.path,
                 req.path, "changed" if result.changed else "unchanged", " (check)" if req.check else "")
