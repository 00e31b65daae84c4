# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The caller side of the natsops protocol (private to this collection): the executor modules and the
connection plugin's control process (plugins/plugin_utils/_control.py) use it.

``AsyncExecutorClient`` speaks the protocol of ``wire`` over a nats-py connection; ``ExecutorClient`` gives the
modules and ``control_persist: 0`` workers a synchronous API over it: run a command, put a file, fetch a file,
place an Object Store object, discover executors. Errors are ``ExecutorUnreachable`` (nobody serves the instance id, the NATS
connection failed, the executor vanished) or ``ExecutorTaskError`` (the executor was
reached and reported a failure); both carry a wire error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import collections
import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterable, List, Optional, Set, Tuple, Type, TypeVar

from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorError, ExecutorTaskError, ExecutorUnreachable
from ansible_collections.natsops.fleet.plugins.module_utils.wire import bklite
from ansible_collections.natsops.fleet.plugins.module_utils.wire import connect as wire_connect
from ansible_collections.natsops.fleet.plugins.module_utils.wire import signing
from ansible_collections.natsops.fleet.plugins.module_utils.wire.atomic import AtomicFile
from ansible_collections.natsops.fleet.plugins.module_utils.wire.contract import (
    E_BAD_REQUEST, E_CHECKSUM_MISMATCH, E_CONNECT, E_EXECUTOR_LOST, E_NO_RESPONDERS, E_PAYLOAD_MISSING, E_SIZE_MISMATCH, E_STREAM,
    FRAME_OVERHEAD, H_STATUS, KIND_ACCEPTED, KIND_DATA, KIND_ERROR, KIND_KEEPALIVE, KIND_REQUEST, KIND_RESULT, SERVICE_NAME,
    STREAM_STDERR, STREAM_STDOUT, WireError, chunk_size, kind_of, liveness_timeout, object_digest_hex, pack,
    parse_executor_info, serves, subject, unpack, validate_instance_id, validate_namespace,
)
from ansible_collections.natsops.fleet.plugins.module_utils.wire.messages import (
    DEFAULT_KEEPALIVE, MAX_STDIN_BLOB, Accepted, Digest, ExecRequest, ExecResult, FetchRequest, FileSummary, Message, PutRequest,
    Request, StdinBlob, Target, TransferRequest, TransferResult,
)
from ansible_collections.natsops.fleet.plugins.module_utils.wire.streams import StreamReceiver, StreamSender, private_inbox

try:
    import nats
    import nats.errors
    import nats.js.errors
    HAS_NATS = True
    NATS_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the controller environment
    HAS_NATS = False
    NATS_IMPORT_ERROR = _exc

DISCOVERY_WAIT = 0.5     # longest time to collect discovery replies
DEFAULT_EXECUTOR_WAIT = 30.0  # seconds a request waits for an executor that is coming (back)
DISCOVERY_QUIET = 0.15   # stop earlier once replies stop coming
PAYLOAD_MIN_STDIN = 32 * 1024  # stdin below this is sent whole: naming a range by digest saves too little
# a pipelined module run's payload zip (ansible-core's AnsiballZ: ``zip_data='<base64>'``), 4 KiB of base64 at least
_ZIP_LITERAL = re.compile(rb"(?<![A-Za-z0-9_])zip_data=(?P<q>['\"])(?P<zip>[A-Za-z0-9+/]{4096,}={0,2})(?P=q)")


def missing_nats_message() -> str:
    return ("the natsops.fleet collection needs the Python package nats-py on the controller "
            "(pip install nats-py nkeys): %s" % NATS_IMPORT_ERROR)


def describe_executor(record: Dict[str, Any]) -> str:
    return "%s (host %s, executor %s)" % (", ".join(record["instances"]) or "-", record["hostname"] or "?", record["version"])


def no_responders_message(subj: str, instance_id: Optional[str], namespace: str, executors: List[Dict[str, Any]],
                          servers: str) -> str:
    """The error a user sees when nobody serves the instance id: what, where, who is online, how to fix."""
    lines = ["no executor serves instance id %r: nobody answered on subject %r (namespace %r, NATS %s)."
             % (instance_id, subj, namespace, servers)]
    ours = [e for e in executors if e["namespace"] == namespace]
    others = [e for e in executors if e["namespace"] != namespace]
    if ours:
        online = sorted({i for e in ours for i in e["instances"]})
        lines.append("Instance ids online in namespace %r: %s." % (namespace, ", ".join(repr(i) for i in online)))
        lines.extend("  - %s" % describe_executor(e) for e in ours)
    else:
        lines.append("No executor is online in namespace %r." % namespace)
    if others:
        lines.append("Executors online in other namespaces: %s." % "; ".join(
            "%r: %s" % (e["namespace"], ", ".join(e["instances"])) for e in others))
    lines.append("Fix: point the host at an instance id that is online (ansible_nats_executor, default: the "
                 "inventory hostname), or start an executor for it: natsops-executor --instance %r "
                 "(the natsops.fleet.executor role's instance ids)." % instance_id)
    return "\n".join(lines)


async def open_nats(nats_options: Dict[str, Any], name: str, connect_timeout: float) -> Any:
    """Connect to NATS with our option names (a session: a couple of quick reconnects); raise
    ExecutorUnreachable(connect_failed) with a clear message."""
    if not HAS_NATS:
        raise ExecutorUnreachable(E_CONNECT, missing_nats_message())
    try:
        return await wire_connect.connect(nats_options, name, connect_timeout, wire_connect.SESSION)
    except wire_connect.ConnectOptionsError as exc:
        raise ExecutorUnreachable(E_CONNECT, "bad NATS connection options: %s" % exc) from None
    except wire_connect.NatsConnectError as exc:
        raise ExecutorUnreachable(E_CONNECT, str(exc)) from None


class CallerTrust:
    """What a caller signs its requests with and whose replies it believes: its signing key (None: requests go
    unsigned; executors that require signatures refuse them) and the executor keys pinned per instance id."""

    def __init__(self, signing_key: Optional[str] = None, known_executors: Optional[str] = None) -> None:
        try:
            self.key = signing.SigningKey.from_file(signing_key) if signing_key else None
        except signing.SigningError as exc:
            raise ExecutorUnreachable(E_CONNECT, "bad signing_key: %s" % exc) from None
        self.known = signing.KnownExecutors(known_executors)

    @classmethod
    def from_options(cls, options: Dict[str, Any]) -> "CallerTrust":
        """From the caller's options: ``signing_key`` (default: the seed of ``nkey`` or ``creds``) and
        ``known_executors``."""
        return cls(signing.default_signing_key(options), options.get("known_executors"))

    def sign(self, subj: str, body: bytes) -> Dict[str, str]:
        """The signature headers of a request published on ``subj``."""
        if self.key is None:
            return {}
        return self.key.sign(signing.signed_bytes(signing.REQUEST_TAG, subj, body))

    def check_reply(self, instance_id: Optional[str], req: Request, headers: Any, body: bytes, what: str) -> None:
        """When executor keys are pinned for the instance id, a reply they did not sign for this very request is
        refused (a forged or altered reply never returns data)."""
        try:
            verifier = self.known.verifier_for(instance_id or "")
        except signing.SigningError as exc:
            raise ExecutorTaskError(signing.E_INTEGRITY, str(exc)) from None
        if verifier is None:
            return
        try:
            verifier.verify(signing.signed_bytes(signing.RESULT_TAG, req.binding(), body), headers, what)
        except WireError as exc:
            raise ExecutorTaskError(signing.E_INTEGRITY, "integrity error: %s; the executors pinned for instance id %r "
                                    "in %s are %s, so the reply was refused (if the executor's key was changed on "
                                    "purpose, pin the new one)" % (exc.message, instance_id, self.known.path,
                                                                   ", ".join(verifier.keys())),
                                    dict(exc.details, cause=exc.code)) from None


_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")


def _reply(cls: Type[_M], doc: Any, what: str) -> _M:
    """A typed reply from the executor; a malformed one fails the task as a stream error."""
    try:
        return cls.from_dict(doc)
    except WireError as exc:
        raise ExecutorTaskError(E_STREAM, "malformed %s from the executor: %s" % (what, exc.message)) from None


_UNKNOWN_FIELD = re.compile(r"^[a-z_]+: unknown field '([a-z_]+)'$")


def _unknown_fields(exc: ExecutorError) -> Set[str]:
    """The fields an executor refused a request for only because it does not know them (an older executor), or an
    empty set when anything else was wrong with it too."""
    problems = ((exc.details or {}).get("problems") or []) if exc.code == E_BAD_REQUEST else []
    names = [_UNKNOWN_FIELD.match(p) if isinstance(p, str) else None for p in problems]
    return {m.group(1) for m in names if m} if names and all(names) else set()


def _zip_range(stdin: bytes) -> Optional[Tuple[int, int]]:
    """(offset, size) of the payload zip's base64 in a pipelined module run's stdin, or None."""
    if len(stdin) < PAYLOAD_MIN_STDIN:
        return None
    match = _ZIP_LITERAL.search(stdin)
    if match is None or match.end("zip") - match.start("zip") > MAX_STDIN_BLOB:
        return None
    return match.start("zip"), match.end("zip") - match.start("zip")


def _sent_part(stdin: bytes, blobs: Optional[List[StdinBlob]]) -> bytes:
    """The bytes of stdin to send: all of it but the ranges left to the executor's cache."""
    kept = [b for b in blobs or () if not b.sent]
    if not kept:
        return stdin
    parts: List[bytes] = []
    position = 0
    for blob in kept:
        parts.append(stdin[position:blob.offset])
        position = blob.end()
    parts.append(stdin[position:])
    return b"".join(parts)


class PayloadMemory:
    """What a caller believes executors keep in their payload caches (payload by digest), per (namespace, instance
    id): the digests it sent them lately, most recent kept, and the instance ids whose executors do not know the
    ``stdin_blobs`` field or keep nothing. The control process keeps one for all its tasks; a belief that is
    wrong (evicted, restarted, another executor of the instance id) costs one ``payload_missing`` round trip."""

    def __init__(self, per_instance: int = 32, instances: int = 4096) -> None:
        self.per_instance = per_instance
        self.instances = instances
        self._sent: "collections.OrderedDict[Tuple[str, Optional[str]], collections.OrderedDict[str, None]]" = \
            collections.OrderedDict()
        self._unsupported: "collections.OrderedDict[Tuple[str, Optional[str]], None]" = collections.OrderedDict()

    def supported(self, key: Tuple[str, Optional[str]]) -> bool:
        return key not in self._unsupported

    def unsupported(self, key: Tuple[str, Optional[str]]) -> None:
        """The executors of ``key`` refused the field or keep nothing: send them everything from now on."""
        self._unsupported[key] = None
        self._sent.pop(key, None)
        while len(self._unsupported) > self.instances:
            self._unsupported.popitem(last=False)

    def has(self, key: Tuple[str, Optional[str]], sha256: str) -> bool:
        digests = self._sent.get(key)
        return digests is not None and sha256 in digests

    def sent(self, key: Tuple[str, Optional[str]], digests: Iterable[str]) -> None:
        known = self._sent.pop(key, None) or collections.OrderedDict()
        self._sent[key] = known  # most recently used instance id last
        for sha256 in digests:
            known.pop(sha256, None)
            known[sha256] = None
        while len(known) > self.per_instance:
            known.popitem(last=False)
        while len(self._sent) > self.instances:
            self._sent.popitem(last=False)

    def forget(self, key: Tuple[str, Optional[str]], digests: Iterable[str]) -> None:
        known = self._sent.get(key)
        for sha256 in digests:
            if known is not None:
                known.pop(sha256, None)


def _check_summary(what: str, received: FileSummary, reported: FileSummary) -> None:
    """The bytes received must be the bytes the executor says it sent."""
    if reported.size != received.size:
        raise ExecutorTaskError(E_SIZE_MISMATCH, "%s: received %d bytes, the executor sent %r" % (what, received.size, reported.size))
    if reported.sha256 != received.sha256:
        raise ExecutorTaskError(E_CHECKSUM_MISMATCH, "%s: sha256 of the received bytes differs from the executor's" % what)


class AsyncExecutorClient:
    """The protocol, caller side, over an existing nats-py connection (shared by the sync client and the mux)."""

    def __init__(self, nc: Any, instance_id: Optional[str], namespace: str = "natsops", connect_timeout: float = 10.0,
                 keepalive: float = DEFAULT_KEEPALIVE, servers: Optional[str] = None,
                 target: Optional[Dict[str, Any]] = None, trust: Optional["CallerTrust"] = None,
                 executor_wait: float = DEFAULT_EXECUTOR_WAIT, payloads: Optional[PayloadMemory] = None) -> None:
        self.nc = nc
        self.trust = trust or CallerTrust()
        # what the executors of each instance id keep by digest (shared by the control process's tasks)
        self.payloads = payloads if payloads is not None else PayloadMemory()
        # how long a request waits for an executor of the instance id to come (back): a restart, a failover
        self.executor_wait = max(0.0, float(executor_wait))
        # SSH mode: the host the executor reaches (validated now, before anything is sent); None = the executor's own
        self.target = Target.from_dict(target) if target else None
        self.instance_id = validate_instance_id(instance_id) if instance_id is not None else None
        self.namespace = validate_namespace(namespace)
        self.connect_timeout = float(connect_timeout)
        self.keepalive = float(keepalive)
        self.servers = servers or wire_connect.DEFAULT_SERVER

    def _subject(self, op: str) -> str:
        return subject(self.namespace, op, self.instance_id)

    def _new(self, cls: Type[Request], reply_to: str, **fields: Any) -> Any:
        """A request of ``cls`` for this client's target; a request the executor would refuse fails here."""
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            # after connect_timeout this client stops waiting for the acceptance: the executor must not start it then
            return cls.new(reply_to, keepalive=self.keepalive, target=self.target,
                           expires=round(time.time() + self.connect_timeout, 3), **fields)
        except WireError as exc:
            raise ExecutorTaskError(exc.code, exc.message, exc.details) from None

    async def _ask_until_served(self, req: Request, attachment: bytes) -> Tuple[Request, Any]:
        """Send the request and return (the request as last sent, the executor's reply).

        Replies come to one private inbox for the whole exchange (nats-py's request inboxes can be predicted).
        While nobody serves the subject (status 503: an executor restarting), the request is sent again with
        backoff; when nothing answers within ``connect_timeout`` (the request or its acceptance was lost as a NATS
        server failed over), it is sent again too: an executor that already has the job answers again without
        running it twice. Each copy is the same job (id), freshly signed (nonce, expiry). Raises
        NoRespondersError or asyncio.TimeoutError when ``executor_wait`` is over."""
        subj = self._subject(req.op)
        replies: asyncio.Queue = asyncio.Queue()

        async def on_reply(msg: Any) -> None:
            replies.put_nowait(msg)

        sub = await self.nc.subscribe(private_inbox(self.nc), cb=on_reply)
        deadline = time.monotonic() + self.executor_wait
        delay = 0.1
        try:
            while True:
                headers, body = pack(KIND_REQUEST, req.to_dict(), attachment)
                headers.update(self.trust.sign(subj, body))
                await self.nc.publish(subj, body, reply=sub.subject, headers=headers)
                try:
                    msg = await asyncio.wait_for(replies.get(), self.connect_timeout)
                except asyncio.TimeoutError:
                    if time.monotonic() >= deadline:
                        raise
                else:
                    if (msg.headers or {}).get(H_STATUS) != "503":
                        return req, msg
                    if time.monotonic() + delay > deadline:
                        raise nats.errors.NoRespondersError from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                req = dataclasses.replace(req, nonce=signing.new_nonce(), expires=round(time.time() + self.connect_timeout, 3))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _request(self, req: Request, attachment: bytes = b"") -> Tuple[Request, Accepted]:
        """Send the request and take its acceptance; returns the request as finally sent (its nonce binds the
        replies) and the acceptance."""
        subj = self._subject(req.op)
        try:
            req, msg = await self._ask_until_served(req, attachment)
        except nats.errors.NoRespondersError:
            executors = await self.discover(DISCOVERY_WAIT)
            waited = " (waited %.0f s for one to come: executor_wait)" % self.executor_wait if self.executor_wait else ""
            raise ExecutorUnreachable(E_NO_RESPONDERS, no_responders_message(
                subj, self.instance_id, self.namespace, executors, self.servers) + waited,
                {"subject": subj, "instance_id": self.instance_id, "executors": executors}) from None
        except asyncio.TimeoutError:
            raise ExecutorUnreachable(E_EXECUTOR_LOST, "an executor for instance id %r was subscribed on %r but did "
                                                       "not accept the request within %.0f s" % (
                                                           self.instance_id, subj, self.connect_timeout)) from None
        self.trust.check_reply(self.instance_id, req, msg.headers, msg.data, "the executor's reply")
        doc = self._decode(msg.headers, msg.data)
        kind = kind_of(msg.headers)
        if kind == KIND_ERROR:
            raise ExecutorError.from_wire(WireError.from_dict(doc))
        if kind != KIND_ACCEPTED:
            raise ExecutorTaskError(E_STREAM, "unexpected reply kind %r to a %s request" % (kind, req.op))
        return req, _reply(Accepted, doc, "acceptance")

    @staticmethod
    def _decode(headers: Any, data: bytes) -> Dict[str, Any]:
        """The JSON document of a reply (replies carry no attachment)."""
        try:
            return unpack(headers, data, max_json=len(data) + 1)[0]
        except WireError as exc:
            raise ExecutorTaskError(exc.code, "malformed reply from the executor: %s" % exc.message) from None

    async def _next(self, receiver: StreamReceiver, accepted: Accepted, req: Request) -> Any:
        silence = liveness_timeout(self.keepalive)
        try:
            msg = await receiver.get(silence)
        except asyncio.TimeoutError:
            executor = accepted.executor
            raise ExecutorUnreachable(E_EXECUTOR_LOST, "executor %s on host %s (instance id %r) stopped answering: "
                                                       "no message for %.0f s while running the task" % (
                                                           executor.service_id, executor.name, self.instance_id,
                                                           silence)) from None
        except WireError as exc:
            raise ExecutorError.from_wire(exc) from None
        if msg.kind in (KIND_RESULT, KIND_ERROR):
            self.trust.check_reply(self.instance_id, req, msg.headers, msg.data, "the job's %s" % msg.kind)
        if msg.kind == KIND_ERROR:
            doc = self._decode(msg.headers, msg.data)
            raise ExecutorError.from_wire(WireError.from_dict(doc))
        return msg

    async def _result(self, receiver: StreamReceiver, accepted: Accepted, req: Request) -> Dict[str, Any]:
        """The result document of a job whose stream carries only keepalives before it."""
        while True:
            msg = await self._next(receiver, accepted, req)
            if msg.kind == KIND_RESULT:
                return self._decode(msg.headers, msg.data)
            if msg.kind != KIND_KEEPALIVE:
                raise ExecutorTaskError(E_STREAM, "unexpected %r message in a %s stream" % (msg.kind, req.op))

    def _inline_fits(self, req: Request, size: int) -> bool:
        return size + len(json.dumps(req.to_dict())) + FRAME_OVERHEAD <= self.nc.max_payload

    async def _upload(self, accepted: Accepted, data_iter: Iterable[bytes]) -> None:
        sender = await StreamSender(self.nc, accepted.upload, ack_timeout=liveness_timeout(self.keepalive)).start()
        try:
            for block in data_iter:
                await sender.send(KIND_DATA, attachment=block)
            await sender.drain()
        except WireError as exc:
            raise ExecutorUnreachable(E_EXECUTOR_LOST, "upload to the executor failed: %s" % exc.message) from None
        finally:
            await sender.close()

    @contextlib.asynccontextmanager
    async def _events(self) -> AsyncIterator[StreamReceiver]:
        """A fresh inbox for one job's event stream, closed afterwards."""
        receiver = await StreamReceiver(self.nc).start()
        try:
            yield receiver
        finally:
            await receiver.close()

    # ------------------------------------------------------------ exec

    async def exec_command(self, command: Optional[str] = None, argv: Optional[List[str]] = None,
                           stdin: Optional[bytes] = None, shell: str = "/bin/sh", become: Optional[Dict[str, Any]] = None,
                           pty: bool = False, timeout: float = 0, env: Optional[Dict[str, str]] = None,
                           cwd: Optional[str] = None, on_output: Optional[Callable[[str, bytes], Any]] = None,
                           no_log: bool = False, run_as: Optional[str] = None,
                           warm: bool = True) -> Tuple[int, bytes, bytes]:
        """Run a command; returns (rc, stdout bytes, stderr bytes). ``on_output(stream, data)`` (a coroutine
        function) sees the output as it arrives. With ``run_as``, an executor whose commands start as another
        account refuses it (E_ACCOUNT, its account in the details) and nothing runs. ``warm=False`` asks the
        executor never to run it from a warm interpreter."""
        stdin = stdin or b""
        key = (self.namespace, self.instance_id)
        fields = dict(command=command, argv=argv, shell=shell, pty=pty, become=become, timeout=timeout, env=env, cwd=cwd,
                      no_log=no_log or None, run_as=run_as, warm=None if warm else False,
                      stdin_blobs=self._blobs(stdin, key))
        payload_resent = False
        while True:  # each round after the first sends the payload (once) or drops a field: four rounds at most
            try:
                result = await self._exec(fields, stdin, on_output)
            except ExecutorTaskError as exc:
                blobs: List[StdinBlob] = fields["stdin_blobs"] or []
                if exc.code == E_PAYLOAD_MISSING and blobs and not payload_resent:
                    # nothing ran: the executor lacks a range this caller thought it had; send it this once
                    self.payloads.forget(key, (exc.details or {}).get("missing") or [])
                    if (exc.details or {}).get("capacity") == 0:
                        self.payloads.unsupported(key)
                    fields["stdin_blobs"] = [dataclasses.replace(b, sent=True) for b in blobs]
                    payload_resent = True
                    continue
                unknown = _unknown_fields(exc)
                if not unknown or not unknown <= {name for name in ("warm", "stdin_blobs") if fields[name] is not None}:
                    raise
                # an older executor refused fields it does not know (nothing ran): warm runs and payloads by digest
                # are optimisations it does not have; it runs the request as it always did
                if "stdin_blobs" in unknown:
                    self.payloads.unsupported(key)
                fields.update((name, None) for name in unknown)
                continue
            if fields["stdin_blobs"] and self.payloads.supported(key):
                self.payloads.sent(key, (b.sha256 for b in fields["stdin_blobs"]))
            return result

    def _blobs(self, stdin: bytes, key: Tuple[str, Optional[str]]) -> Optional[List[StdinBlob]]:
        """A pipelined module run's payload zip as a range named by digest, left out (``sent: false``) when this
        caller sent it to the instance id's executors lately; None when stdin holds none or they keep nothing."""
        found = _zip_range(stdin) if self.payloads.supported(key) else None
        if found is None:
            return None
        offset, size = found
        sha256 = hashlib.sha256(stdin[offset:offset + size]).hexdigest()
        return [StdinBlob(offset=offset, size=size, sha256=sha256, sent=not self.payloads.has(key, sha256))]

    async def _exec(self, fields: Dict[str, Any], stdin: bytes,
                    on_output: Optional[Callable[[str, bytes], Any]]) -> Tuple[int, bytes, bytes]:
        """One exec request; ``stdin`` is the whole stdin, of which the ranges of ``fields['stdin_blobs']`` that are
        not ``sent`` are left out of the bytes sent."""
        sent = _sent_part(stdin, fields.get("stdin_blobs"))
        async with self._events() as receiver:
            req = self._new(ExecRequest, receiver.subject, stdin=Digest.of(stdin) if stdin else None, **fields)
            inline = sent if sent and self._inline_fits(req, len(sent)) else b""
            req, accepted = await self._request(req, inline)
            if accepted.upload:
                step = chunk_size(self.nc.max_payload)
                await self._upload(accepted, (sent[i:i + step] for i in range(0, len(sent), step)))
            out = {STREAM_STDOUT: bytearray(), STREAM_STDERR: bytearray()}
            while True:
                msg = await self._next(receiver, accepted, req)
                if msg.kind == KIND_DATA and msg.stream in out:
                    out[msg.stream].extend(msg.data)
                    if on_output is not None:
                        await on_output(msg.stream, msg.data)
                elif msg.kind == KIND_RESULT:
                    result = _reply(ExecResult, self._decode(msg.headers, msg.data), "exec result")
                    _check_summary(STREAM_STDOUT, Digest.of(bytes(out[STREAM_STDOUT])), result.stdout)
                    _check_summary(STREAM_STDERR, Digest.of(bytes(out[STREAM_STDERR])), result.stderr)
                    return result.rc, bytes(out[STREAM_STDOUT]), bytes(out[STREAM_STDERR])
                elif msg.kind != KIND_KEEPALIVE:
                    raise ExecutorTaskError(E_STREAM, "unexpected %r message in an exec stream" % msg.kind)

    # ------------------------------------------------------------ put

    async def put_file(self, local_path: str, remote_path: str, mode: Optional[int] = None) -> Dict[str, Any]:
        """Copy a local file to the executor's host: complete and verified, or not at all."""
        digest = Digest()
        with open(local_path, "rb") as handle:
            for block in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(block)
        announced = digest.summary()
        if mode is None:
            mode = os.stat(local_path).st_mode & 0o7777
        async with self._events() as receiver:
            req = self._new(PutRequest, receiver.subject, path=remote_path, size=announced.size, sha256=announced.sha256,
                            mode=mode)
            with open(local_path, "rb") as handle:
                inline = handle.read() if announced.size and self._inline_fits(req, announced.size) else b""
                req, accepted = await self._request(req, inline)
                if accepted.upload:
                    step = chunk_size(self.nc.max_payload)
                    await self._upload(accepted, iter(lambda: handle.read(step), b""))
            result = _reply(FileSummary, await self._result(receiver, accepted, req), "put result")
            _check_summary("put %s" % remote_path, announced, result)
            return result.to_dict()

    # ------------------------------------------------------------ fetch

    async def fetch_file(self, remote_path: str, local_path: str) -> Dict[str, Any]:
        """Copy a file from the executor's host: written to a temp file, verified, renamed."""
        target = AtomicFile(os.path.abspath(local_path))
        try:
            async with self._events() as receiver:
                req, accepted = await self._request(self._new(FetchRequest, receiver.subject, path=remote_path))
                while True:
                    msg = await self._next(receiver, accepted, req)
                    if msg.kind == KIND_DATA:
                        target.write(msg.data)
                    elif msg.kind == KIND_RESULT:
                        result = _reply(FileSummary, self._decode(msg.headers, msg.data), "fetch result")
                        _check_summary("fetch %s" % remote_path, target.summary(), result)
                        target.commit()
                        return result.to_dict()
                    elif msg.kind != KIND_KEEPALIVE:
                        raise ExecutorTaskError(E_STREAM, "unexpected %r message in a fetch stream" % msg.kind)
        finally:
            target.discard()

    # ------------------------------------------------------------ transfer

    async def upload_object(self, bucket: str, name: str, local_path: str, sha256: str) -> bool:
        """Put a file into the JetStream Object Store unless the object already holds this content
        (the bucket is created with defaults when missing). Returns True when it uploaded."""
        js = self.nc.jetstream()
        try:
            store = await js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            store = await js.create_object_store(bucket)
        try:
            if object_digest_hex((await store.get_info(name)).digest) == sha256:
                return False
        except nats.js.errors.NotFoundError:
            pass
        with open(local_path, "rb") as handle:
            info = await store.put(name, handle)
        if object_digest_hex(info.digest) != sha256:
            raise ExecutorTaskError(E_CHECKSUM_MISMATCH, "%s changed while it was uploaded to the Object Store" % local_path)
        return True

    async def transfer(self, path: str, bucket: Optional[str] = None, object_name: Optional[str] = None,
                       source_path: Optional[str] = None, sha256: Optional[str] = None, mode: Optional[int] = None,
                       check: bool = False) -> Dict[str, Any]:
        """Have the executor place an Object Store object (or a file of its own host) at ``path``; returns
        its result: changed, sha256, size, before."""
        source = {"bucket": bucket, "object": object_name} if object_name is not None else {"path": source_path}
        async with self._events() as receiver:
            req = self._new(TransferRequest, receiver.subject, source=source, path=path, check=check, sha256=sha256,
                            mode=mode)
            req, accepted = await self._request(req)
            doc = await self._result(receiver, accepted, req)
            result = _reply(TransferResult, doc, "transfer result").to_dict()
            result.setdefault("size", None)
            result.setdefault("before", None)
            return result

    # ------------------------------------------------------------ BK-Lite protocol

    async def bklite_call(self, method: str, request: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        """One BK-Lite request (wire/bklite.py) to the executors with our instance id; returns the reply dict.
        Nobody subscribed is reported like our own protocol does, with what discovery can see."""
        subj = bklite.subject(method, self.instance_id)
        try:
            msg = await self.nc.request(subj, bklite.pack_request(request), timeout=timeout)
        except nats.errors.NoRespondersError:
            compat = [e for e in await self.discover(DISCOVERY_WAIT) if e.get("bklite")]
            served = sorted({i for e in compat for i in e["instances"]})
            raise ExecutorUnreachable(E_NO_RESPONDERS, (
                "no executor subscribes to %r (BK-Lite protocol, instance id %r) on %s. natsops executors with "
                "--bklite-compat online serve: %s. BK-Lite's own executors cannot be discovered: check that the "
                "executor's nats_instanceId is exactly %r, or address one of the instance ids above."
            ) % (subj, self.instance_id, self.servers, ", ".join(repr(i) for i in served) or "none", self.instance_id),
                {"subject": subj, "instance_id": self.instance_id, "compat_instances": served}) from None
        except nats.errors.TimeoutError:
            raise ExecutorUnreachable(E_EXECUTOR_LOST, "no reply on %r within %.0f s (BK-Lite protocol)" % (subj, timeout)) from None
        try:
            return bklite.parse_reply(msg.data)
        except bklite.BkliteError as exc:
            raise ExecutorTaskError(E_STREAM, exc.message) from exc

    async def object_digest(self, bucket: str, name: str) -> Optional[str]:
        """sha256 (hex) of an Object Store object, or None when the bucket or object is missing."""
        try:
            return object_digest_hex((await (await self.nc.jetstream().object_store(bucket)).get_info(name)).digest)
        except nats.js.errors.NotFoundError:
            return None

    async def bklite_health(self, wait: float = DISCOVERY_WAIT) -> List[Dict[str, Any]]:
        """health.check replies of every executor subscribed for our instance id (BK-Lite's own executors
        all answer; ours answer once per queue group)."""
        replies = await self._collect(bklite.subject(bklite.HEALTH_CHECK, self.instance_id), wait,
                                      bklite.pack_request({"execute_timeout": 5}))
        return [r for r in replies if isinstance(r, dict) and r.get("status")]

    # ------------------------------------------------------------ discovery

    async def _collect(self, subj: str, wait: float, payload: bytes = b"",
                       enough: Optional[Callable[[Any], bool]] = None) -> List[Any]:
        """Replies to one request for up to ``wait`` seconds (less once they stop coming, or at once when
        ``enough`` accepts a reply)."""
        replies = []
        last = [time.monotonic()]
        inbox = self.nc.new_inbox()

        async def on_reply(msg: Any) -> None:
            last[0] = time.monotonic()
            try:
                replies.append(json.loads(msg.data.decode("utf-8")))
            except ValueError:
                return  # not a micro service reply; ignore
            if enough is not None and enough(replies[-1]):
                done.set()

        done = asyncio.Event()
        sub = await self.nc.subscribe(inbox, cb=on_reply)
        try:
            await self.nc.publish(subj, payload, reply=inbox)
            started = time.monotonic()
            while time.monotonic() - started < wait and not done.is_set():
                try:
                    await asyncio.wait_for(done.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
                if replies and time.monotonic() - last[0] >= DISCOVERY_QUIET:
                    break
        finally:
            await sub.unsubscribe()
        return replies

    async def discover(self, wait: float = DISCOVERY_WAIT, stats: bool = False) -> List[Dict[str, Any]]:
        """Every executor online (all namespaces), as records; with stats=True also their load."""
        records = []
        for info in await self._collect("$SRV.INFO.%s" % SERVICE_NAME, wait):
            record = parse_executor_info(info)
            if record is not None:
                records.append(record)
        if stats and records:
            by_id = {r["id"]: r for r in records}
            for reply in await self._collect("$SRV.STATS.%s" % SERVICE_NAME, wait):
                record = by_id.get(reply.get("id")) if isinstance(reply, dict) else None
                endpoints = reply.get("endpoints") or [] if record else []
                if record is not None and endpoints:
                    record["load"] = endpoints[0].get("data") or {}
                    record["requests"] = sum(e.get("num_requests", 0) for e in endpoints)
        records.sort(key=lambda r: (r["namespace"], r["hostname"], r["id"] or ""))
        return records

    async def account(self, wait: float = DISCOVERY_WAIT) -> Optional[str]:
        """The account the executor serving this instance id starts commands as (from its discovery record, the
        first that answers), or None: no such executor answered within ``wait`` seconds, or it is too old to say.
        Only a hint: an exec request carries ``run_as`` and the executor itself refuses one that does not match."""
        def ours(info: Any) -> bool:
            record = parse_executor_info(info)
            return record is not None and bool(self.serving([record]))

        replies = await self._collect("$SRV.INFO.%s" % SERVICE_NAME, wait, enough=ours)
        return self.account_in([r for r in map(parse_executor_info, replies) if r is not None])

    def account_in(self, executors: List[Dict[str, Any]]) -> Optional[str]:
        """The account reported by the first of these executors (from discover) that serves this instance id."""
        for record in self.serving(executors):
            account = record.get("account")
            if isinstance(account, str) and account:
                return account
        return None

    def serving(self, executors: List[Dict[str, Any]], instance_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Executors (from discover) in our namespace that serve an instance id."""
        instance_id = instance_id or self.instance_id
        return [e for e in executors if e["namespace"] == self.namespace and serves(e, instance_id)]


class ExecutorClient:
    """Synchronous client with its own event loop and NATS connection. One per Ansible connection or module run."""

    def __init__(self, nats_options: Dict[str, Any], instance_id: Optional[str], namespace: str = "natsops",
                 connect_timeout: float = 10.0, keepalive: float = DEFAULT_KEEPALIVE, name: str = "natsops.fleet",
                 target: Optional[Dict[str, Any]] = None, trust: Optional[CallerTrust] = None,
                 executor_wait: float = DEFAULT_EXECUTOR_WAIT) -> None:
        self.nats_options = nats_options
        self.name = name
        self.connect_timeout = float(connect_timeout)
        servers = ",".join(wire_connect.server_list(nats_options.get("servers")))
        # validates instance id and namespace before anything is sent
        self.core = AsyncExecutorClient(None, instance_id, namespace, connect_timeout, keepalive, servers, target,
                                        trust or CallerTrust.from_options(nats_options), executor_wait)
        self._loop = None

    def _run(self, coro: Awaitable[_T]) -> _T:
        return self._loop.run_until_complete(coro)

    def connect(self) -> "ExecutorClient":
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        self.core.nc = self._run(open_nats(self.nats_options, self.name, self.connect_timeout))
        return self

    def close(self) -> None:
        nc = self.core.nc
        if nc is not None:
            try:
                self._run(nc.close())
            except Exception:  # pylint: disable=broad-except
                pass  # closing a broken connection has nothing left to report
            self.core.nc = None
        if self._loop is not None:
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()
            self._loop = None

    def exec_command(self, *args: Any, **kwargs: Any) -> Tuple[int, bytes, bytes]:
        return self._run(self.core.exec_command(*args, **kwargs))

    def put_file(self, local_path: str, remote_path: str, mode: Optional[int] = None) -> Dict[str, Any]:
        return self._run(self.core.put_file(local_path, remote_path, mode))

    def fetch_file(self, remote_path: str, local_path: str) -> Dict[str, Any]:
        return self._run(self.core.fetch_file(remote_path, local_path))

    def transfer(self, path: str, **kwargs: Any) -> Dict[str, Any]:
        return self._run(self.core.transfer(path, **kwargs))

    def object_digest(self, bucket: str, name: str) -> Optional[str]:
        return self._run(self.core.object_digest(bucket, name))

    def bklite_health(self, wait: float = DISCOVERY_WAIT) -> List[Dict[str, Any]]:
        return self._run(self.core.bklite_health(wait))

    def bklite_call(self, method: str, request: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        return self._run(self.core.bklite_call(method, request, timeout))

    def publisher(self) -> Callable[..., Awaitable[None]]:
        """The connection's publish coroutine function (for output line events)."""
        return self.core.nc.publish

    def flush_events(self, events: bklite.LineEvents) -> None:
        """Publish what a bklite.LineEvents still holds and make sure the server has it all."""
        self._run(events.flush())
        self._run(self.core.nc.flush(timeout=5))

    def upload_object(self, bucket: str, name: str, local_path: str, sha256: str) -> bool:
        return self._run(self.core.upload_object(bucket, name, local_path, sha256))

    def discover(self, wait: float = DISCOVERY_WAIT, stats: bool = False) -> List[Dict[str, Any]]:
        return self._run(self.core.discover(wait, stats))

    def account(self, wait: float = DISCOVERY_WAIT) -> Optional[str]:
        return self._run(self.core.account(wait))

    def serving(self, executors: List[Dict[str, Any]], instance_id: Optional[str] = None) -> List[Dict[str, Any]]:
        return self.core.serving(executors, instance_id)
