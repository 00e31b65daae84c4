# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NATS side of the executor: a NATS micro service whose endpoints take jobs.

Every request is answered: ``accepted`` (then the job's events stream to the caller's
``reply_to``) or a structured error. Nothing a caller sends can crash the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

import nats
from nats import micro

from natsops_executor import __version__
from natsops_executor import bklite
from natsops_executor import jobs
from natsops_executor import transfer

try:
    from natsops_executor import ssh
    SSH_UNAVAILABLE = None
except ImportError as _exc:  # paramiko is a dependency of the wheel; a bare copy may lack it: agent mode only
    ssh = None
    SSH_UNAVAILABLE = "SSH mode is unavailable on this executor (%s); install paramiko" % _exc
from natsops_executor._wire import connect as wire_connect
from natsops_executor._wire.contract import (
    E_ABORTED, E_BAD_REQUEST, E_CHECKSUM_MISMATCH, E_INTERNAL, E_SPAWN, E_TOO_LARGE, H_KIND, KIND_ACCEPTED, KIND_ERROR, KIND_REQUEST,
    OP_EXEC, OP_FETCH, OP_PUT, OP_TRANSFER,
    OPERATIONS, PROTOCOL_VERSION, QUEUE_GROUP, SERVICE_NAME, WireError, chunk_size, error_message, executor_metadata,
    pack, sha256_hex, subject, unpack, validate_request,
)
from natsops_executor._wire.streams import StreamReceiver, StreamSender

log = logging.getLogger("natsops_executor")


def service_version(version):
    """The package's PEP 440 version as the semantic version NATS micro services require: the release padded to
    X.Y.Z, anything after it as build metadata (0.1.0.post900 -> 0.1.0+post900, 1.2 -> 1.2.0). Discovery still
    reports the package's own version, in the service metadata."""
    match = re.match(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?(.*)$", version)
    if not match:
        return "0.0.0+" + (re.sub(r"[^0-9A-Za-z-]+", ".", version).strip(".") or "unknown")
    rest = re.sub(r"[^0-9A-Za-z-]+", ".", match.group(4)).strip(".")
    return "%s.%s.%s" % (match.group(1), match.group(2) or 0, match.group(3) or 0) + ("+" + rest if rest else "")


class Executor:
    def __init__(self, cfg):
        self.cfg = cfg
        self.nc = None
        self.heartbeat = None
        self.service = None
        self.jobs = set()
        self.slots = asyncio.Semaphore(cfg.max_jobs)
        self.running = 0
        self.completed = 0
        self.failed = 0
        self.stopping = asyncio.Event()
        self.ssh = None  # SSH mode: the connection pool, created at start

    # ------------------------------------------------------------ lifecycle

    async def start(self):
        cfg = self.cfg
        if ssh is None:
            log.warning("%s", SSH_UNAVAILABLE)
        else:
            self.ssh = ssh.SSHPool(cfg.ssh_settings(), max_threads=cfg.max_jobs * 2 + 4)
            self.ssh.start()
        if self.ssh is not None and cfg.ssh_host_key_policy == "ignore":
            log.warning("SSH HOST KEYS ARE NOT VERIFIED (ssh_host_key_policy: ignore): anyone on the path to a target "
                        "host can impersonate it; use 'strict' or 'accept-new'")
        kwargs = wire_connect.connect_kwargs(cfg.nats_options(), name="natsops-executor %s" % cfg.name)
        kwargs.update(reconnect_time_wait=1.0, error_cb=self._on_error, disconnected_cb=self._on_disconnect,
                      reconnected_cb=self._on_reconnect)
        log.info("connecting to NATS: %s", wire_connect.describe(cfg.nats_options()))
        # the first connection gives up after a few attempts (bad credentials must end the process with a
        # clear message); once connected, reconnect forever: a server restart must not stop the executor
        self.nc = await nats.connect(**kwargs)
        self.nc.options["max_reconnect_attempts"] = -1
        self.service = await micro.add_service(
            self.nc, name=SERVICE_NAME, version=service_version(__version__), queue_group=QUEUE_GROUP,
            description="natsops.fleet executor on %s" % cfg.name,
            metadata=executor_metadata(cfg.namespace, cfg.instances, cfg.name, __version__, ssh=self.ssh is not None,
                                       bklite=cfg.bklite_compat),
            stats_handler=self._stats)
        index = 0
        for inst in cfg.instances:
            for op in OPERATIONS:
                index += 1
                subj = subject(cfg.namespace, op, inst)
                await self.service.add_endpoint(
                    name="%s-%d" % (op, index), subject=subj, handler=self._handler(op),
                    metadata={"instance": inst, "op": op})
                log.info("serving %s (instance %s, queue group %s)", subj, inst, QUEUE_GROUP)
        if cfg.bklite_compat:
            await bklite.CompatServer(self).add_endpoints(self.service, index)
        await self.nc.flush()
        if cfg.register:
            from natsops_executor.registry import Heartbeat  # pylint: disable=import-outside-toplevel
            self.heartbeat = Heartbeat(self.nc, cfg)
            await self.heartbeat.beat()
            self.heartbeat.start()
        log.info("natsops-executor %s ready: %d instance id(s) on %s, max %d jobs, protocol %d, service %s",
                 __version__, len(cfg.instances), self.nc.connected_url.netloc if self.nc.connected_url else "?",
                 cfg.max_jobs, PROTOCOL_VERSION, self.service.id)

    async def stop(self):
        """Stop taking work, give running jobs the grace period, then end them."""
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        if self.service is not None:
            await self.service.stop()
        if self.jobs:
            log.info("waiting up to %.0f s for %d running job(s)", self.cfg.shutdown_grace, len(self.jobs))
            done, pending = await asyncio.wait(self.jobs, timeout=self.cfg.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self.ssh is not None:
            await self.ssh.close()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.drain()
        log.info("natsops-executor stopped")

    async def _on_error(self, exc):
        log.warning("NATS error: %s", exc or type(exc).__name__)

    async def _on_disconnect(self):
        log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnect(self):
        log.info("reconnected to NATS at %s", self.nc.connected_url.netloc if self.nc.connected_url else "?")

    def _stats(self, _endpoint_stats):
        stats = {"running": self.running, "max_jobs": self.cfg.max_jobs, "completed": self.completed,
                 "failed": self.failed, "loadavg": list(os.getloadavg())}
        if self.ssh is not None:
            stats.update(self.ssh.stats())
        return stats

    # ------------------------------------------------------------ requests

    def start_job(self, coro):
        """Run a request's work in its own task (never block the subscription); stop() waits for it."""
        task = asyncio.ensure_future(coro)
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)

    def _handler(self, op):
        async def handle(request):
            self.start_job(self._serve(op, request))
        return handle

    async def _reply_error(self, request, error):
        headers, body = error_message(error.code, error.message, error.details)
        try:
            await request.respond(body, headers=headers)
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("could not send an error reply: %s", exc)

    async def _serve(self, op, request):
        started = time.monotonic()
        req = None
        try:
            if request.headers and request.headers.get(H_KIND) not in (None, KIND_REQUEST):
                raise WireError(E_BAD_REQUEST, "expected a request message")
            doc, attachment = unpack(request.headers, request.data)
            req = validate_request(op, doc)
            if req.get("target") and self.ssh is None:
                raise WireError(E_SPAWN, SSH_UNAVAILABLE or "SSH mode is not running")
        except WireError as exc:
            log.warning("%s request on %s rejected: %s", op, request.subject, exc)
            await self._reply_error(request, exc)
            return
        except Exception as exc:  # pylint: disable=broad-except
            log.exception("unexpected error while parsing a request on %s", request.subject)
            await self._reply_error(request, WireError(E_INTERNAL, "executor failed to parse the request: %r" % exc))
            return

        sender = StreamSender(self.nc, req["reply_to"])
        receiver = None
        ok = False
        try:
            await sender.start()
            chunk = chunk_size(self.nc.max_payload)
            handler = {OP_EXEC: self._exec, OP_PUT: self._put, OP_FETCH: self._fetch, OP_TRANSFER: self._transfer}[op]
            async with self.slots:
                self.running += 1
                try:
                    receiver = await handler(req, attachment, request, sender, chunk)
                finally:
                    self.running -= 1
            await sender.drain()
            ok = True
        except WireError as exc:
            log.info("%s %s failed: %s", op, req["id"], exc)
            await self._job_error(request, sender, exc)
        except asyncio.CancelledError:
            await self._job_error(request, sender, WireError(E_ABORTED, "the executor is shutting down"))
            raise
        except Exception as exc:  # pylint: disable=broad-except
            log.exception("%s %s crashed", op, req["id"])
            await self._job_error(request, sender, WireError(E_INTERNAL, "executor error: %r" % exc))
        finally:
            if ok:
                self.completed += 1
            else:
                self.failed += 1
            await sender.close()
            if isinstance(receiver, StreamReceiver):
                await receiver.close()
            log.debug("%s %s finished in %.3f s", op, req["id"], time.monotonic() - started)

    async def _job_error(self, request, sender, error):
        """Report an error on the job stream; if it was never accepted, reply to the request instead."""
        if getattr(request, "natsops_accepted", False):
            try:
                await sender.send(KIND_ERROR, error.to_dict())
                await sender.drain()
            except WireError as exc:
                log.info("could not report the error to the caller: %s", exc)
            except Exception as exc:  # pylint: disable=broad-except
                log.warning("could not report the error to the caller: %r", exc)
        else:
            await self._reply_error(request, error)

    async def _accept(self, request, req, **extra):
        executor = {"name": self.cfg.name, "service_id": self.service.id, "version": __version__}
        doc = {"v": PROTOCOL_VERSION, "id": req["id"], "executor": executor}
        doc.update(extra)
        headers, body = pack(KIND_ACCEPTED, doc)
        await request.respond(body, headers=headers)
        request.natsops_accepted = True

    async def _upload(self, request, req, size, inline):
        """Accept the request; returns (inline bytes or None, receiver or None)."""
        if inline or size == 0:
            if len(inline) != size:
                raise WireError(E_BAD_REQUEST, "inline data is %d bytes but %d were announced" % (len(inline), size))
            await self._accept(request, req)
            return inline, None
        receiver = await StreamReceiver(self.nc).start()
        await self._accept(request, req, upload=receiver.subject)
        return None, receiver

    async def _exec(self, req, attachment, request, sender, chunk):
        stdin = req["stdin"] or {"size": len(attachment), "sha256": sha256_hex(attachment)}
        data, receiver = await self._upload(request, req, stdin["size"], attachment)
        if receiver is not None:
            parts = []
            await jobs.receive_upload(receiver, stdin["size"], req["keepalive"], parts.append)
            data = b"".join(parts)
        if sha256_hex(data) != stdin["sha256"]:
            raise WireError(E_CHECKSUM_MISMATCH, "stdin sha256 does not match the announced value; nothing was run")
        if req["target"]:
            result = await ssh.run_exec(self.ssh, req, data, sender, chunk)
        else:
            result = await jobs.run_exec(req, data, sender, chunk)
        log.info("exec %s%s rc=%s out=%d err=%d %.3fs", req["id"], _on(req), result["rc"], result["stdout"]["size"],
                 result["stderr"]["size"], result["duration"])
        return receiver

    async def _put(self, req, attachment, request, sender, chunk):
        if len(attachment) > req["size"]:
            raise WireError(E_TOO_LARGE, "inline data is larger than the announced size")
        if req["target"]:
            await ssh.check_put(self.ssh, req)
            inline, receiver = await self._upload(request, req, req["size"], attachment)
            summary = await ssh.run_put(self.ssh, req, inline, receiver, sender)
            log.info("put %s%s %s %d bytes", req["id"], _on(req), req["path"], summary["size"])
            return receiver
        target = jobs.open_put_target(req["path"])
        try:
            inline, receiver = await self._upload(request, req, req["size"], attachment)
        except BaseException:
            target.discard()
            raise
        summary = await jobs.run_put(req, target, inline, receiver, sender)
        log.info("put %s %s %d bytes", req["id"], req["path"], summary["size"])
        return receiver

    async def _fetch(self, req, attachment, request, sender, chunk):
        if req["target"]:
            source = ssh.RemoteSource(self.ssh, req["target"])
            size, mode = await source.open(req["path"])
            try:
                await self._accept(request, req, size=size, mode=mode)
            except BaseException:
                await source.close()
                raise
            summary = await source.send(sender, chunk)
            log.info("fetch %s%s %s %d bytes", req["id"], _on(req), req["path"], summary["size"])
            return None
        fd, size, mode = jobs.open_fetch_source(req["path"])
        try:
            await self._accept(request, req, size=size, mode=mode)
        except Exception:
            os.close(fd)
            raise
        summary = await jobs.run_fetch(fd, sender, chunk)
        log.info("fetch %s %s %d bytes", req["id"], req["path"], summary["size"])
        return None

    async def _transfer(self, req, attachment, request, sender, chunk):  # pylint: disable=unused-argument
        await self._accept(request, req)
        result = await transfer.run_transfer(self, req, sender)
        source = req["source"]
        log.info("transfer %s%s %s -> %s: %s%s", req["id"], _on(req),
                 "object %s/%s" % (source["bucket"], source["object"]) if source["object"] else source["path"],
                 req["path"], "changed" if result["changed"] else "unchanged", " (check)" if req["check"] else "")
        return None


def _on(req):
    """' on user@host:port' for SSH-mode log lines (never credentials)."""
    target = req.get("target")
    return " on %s@%s:%d" % (target["user"], target["host"], target["port"]) if target else ""
