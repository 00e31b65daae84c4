# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side client of natsops executors (private to this collection).

``ExecutorClient`` gives the connection plugin and the modules a synchronous API over
the asyncio protocol in ``wire``: run a command, put a file, fetch a file, discover
executors. Errors are ``ExecutorUnreachable`` (nobody serves the instance id, the NATS
connection failed, the executor vanished) or ``ExecutorTaskError`` (the executor was
reached and reported a failure); both carry a wire error code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid

from ansible_collections.natsops.fleet.plugins.module_utils.errors import ExecutorError, ExecutorTaskError, ExecutorUnreachable
from ansible_collections.natsops.fleet.plugins.module_utils.wire import bklite
from ansible_collections.natsops.fleet.plugins.module_utils.wire import connect as wire_connect
from ansible_collections.natsops.fleet.plugins.module_utils.wire.atomic import AtomicFile
from ansible_collections.natsops.fleet.plugins.module_utils.wire.contract import (
    DEFAULT_KEEPALIVE, E_CHECKSUM_MISMATCH, E_CONNECT, E_EXECUTOR_LOST, E_NO_RESPONDERS, E_SIZE_MISMATCH, E_STREAM,
    FRAME_OVERHEAD, KIND_ACCEPTED, KIND_DATA, KIND_ERROR, KIND_KEEPALIVE, KIND_REQUEST, KIND_RESULT, OP_EXEC,
    OP_FETCH, OP_PUT, OP_TRANSFER, PROTOCOL_VERSION, SERVICE_NAME, STREAM_STDERR, STREAM_STDOUT, WireError, chunk_size, kind_of,
    liveness_timeout, object_digest_hex, pack, parse_executor_info, serves, subject, unpack, validate_instance_id, validate_namespace,
)
from ansible_collections.natsops.fleet.plugins.module_utils.wire.streams import StreamReceiver, StreamSender

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
DISCOVERY_QUIET = 0.15   # stop earlier once replies stop coming


def missing_nats_message():
    return ("the natsops.fleet collection needs the Python package nats-py on the controller "
            "(pip install nats-py nkeys): %s" % NATS_IMPORT_ERROR)


def describe_executor(record):
    return "%s (host %s, executor %s)" % (", ".join(record["instances"]) or "-", record["hostname"] or "?", record["version"])


def no_responders_message(subj, instance_id, namespace, executors, servers):
    """The error a user sees when nobody serves the instance id: what, where, who is online, how to fix."""
    lines = ["no executor serves instance id %r: nobody answered on subject %r (namespace %r, NATS %s)."
             % (instance_id, subj, namespace, servers)]
    ours = [e for e in executors if e["namespace"] == namespace]
    others = [e for e in executors if e["namespace"] != namespace]
    if ours:
        online = sorted(set(i for e in ours for i in e["instances"]))
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


async def open_nats(nats_options, name, connect_timeout):
    """Connect to NATS with our option names; raise ExecutorUnreachable(connect_failed) with a clear message."""
    if not HAS_NATS:
        raise ExecutorUnreachable(E_CONNECT, missing_nats_message())
    try:
        kwargs = wire_connect.connect_kwargs(nats_options, name=name, connect_timeout=connect_timeout)
    except wire_connect.ConnectOptionsError as exc:
        raise ExecutorUnreachable(E_CONNECT, "bad NATS connection options: %s" % exc)
    try:
        # bound the whole attempt: nats-py would otherwise retry a dead server for minutes
        return await asyncio.wait_for(nats.connect(**kwargs), connect_timeout * 2 + 1)
    except Exception as exc:  # nats-py raises a zoo of exception types here
        raise ExecutorUnreachable(E_CONNECT, "cannot connect to NATS (%s): %s" % (
            wire_connect.describe(nats_options), exc or type(exc).__name__))


class AsyncExecutorClient:
    """The protocol, caller side, over an existing nats-py connection (shared by the sync client and the mux)."""

    def __init__(self, nc, instance_id, namespace="natsops", connect_timeout=10.0, keepalive=DEFAULT_KEEPALIVE,
                 servers=None, target=None):
        self.nc = nc
        self.target = target  # SSH mode: {"host", "port", "user", credentials}; None = the executor's own host
        self.instance_id = validate_instance_id(instance_id) if instance_id is not None else None
        self.namespace = validate_namespace(namespace)
        self.connect_timeout = float(connect_timeout)
        self.keepalive = float(keepalive)
        self.servers = servers or wire_connect.DEFAULT_SERVER

    def _subject(self, op):
        return subject(self.namespace, op, self.instance_id)

    async def _request(self, op, req, attachment=b""):
        subj = self._subject(op)
        headers, body = pack(KIND_REQUEST, req, attachment)
        try:
            msg = await self.nc.request(subj, body, timeout=self.connect_timeout, headers=headers)
        except nats.errors.NoRespondersError:
            executors = await self.discover(DISCOVERY_WAIT)
            raise ExecutorUnreachable(E_NO_RESPONDERS, no_responders_message(
                subj, self.instance_id, self.namespace, executors, self.servers),
                {"subject": subj, "instance_id": self.instance_id, "executors": executors})
        except nats.errors.TimeoutError:
            raise ExecutorUnreachable(E_EXECUTOR_LOST, "an executor for instance id %r was subscribed on %r but did "
                                                       "not accept the request within %.0f s" % (
                                                           self.instance_id, subj, self.connect_timeout))
        doc = self._decode(msg.headers, msg.data)
        kind = kind_of(msg.headers)
        if kind == KIND_ERROR:
            raise ExecutorError.from_wire(WireError.from_dict(doc))
        if kind != KIND_ACCEPTED:
            raise ExecutorTaskError(E_STREAM, "unexpected reply kind %r to a %s request" % (kind, op))
        return doc

    @staticmethod
    def _decode(headers, data):
        """The JSON document of a reply (replies carry no attachment)."""
        try:
            return unpack(headers, data, max_json=len(data) + 1)[0]
        except WireError as exc:
            raise ExecutorTaskError(exc.code, "malformed reply from the executor: %s" % exc.message)

    async def _next(self, receiver, accepted):
        silence = liveness_timeout(self.keepalive)
        try:
            msg = await receiver.get(silence)
        except asyncio.TimeoutError:
            executor = accepted.get("executor") or {}
            raise ExecutorUnreachable(E_EXECUTOR_LOST, "executor %s on host %s (instance id %r) stopped answering: "
                                                       "no message for %.0f s while running the task" % (
                                                           executor.get("service_id", "?"), executor.get("name", "?"),
                                                           self.instance_id, silence))
        except WireError as exc:
            raise ExecutorError.from_wire(exc)
        if msg.kind == KIND_ERROR:
            doc = self._decode(msg.headers, msg.data)
            raise ExecutorError.from_wire(WireError.from_dict(doc))
        return msg

    async def _result(self, receiver, accepted, op):
        """The result document of a job whose stream carries only keepalives before it."""
        while True:
            msg = await self._next(receiver, accepted)
            if msg.kind == KIND_RESULT:
                return self._decode(msg.headers, msg.data)
            if msg.kind != KIND_KEEPALIVE:
                raise ExecutorTaskError(E_STREAM, "unexpected %r message in a %s stream" % (msg.kind, op))

    def _base_request(self, op, reply_to):
        req = {"v": PROTOCOL_VERSION, "op": op, "id": uuid.uuid4().hex, "reply_to": reply_to,
               "keepalive": self.keepalive}
        if self.target:
            req["target"] = self.target
        return req

    def _inline_fits(self, req, size):
        return size + len(json.dumps(req)) + FRAME_OVERHEAD <= self.nc.max_payload

    async def _upload(self, accepted, data_iter):
        sender = await StreamSender(self.nc, accepted["upload"], ack_timeout=liveness_timeout(self.keepalive)).start()
        try:
            for block in data_iter:
                await sender.send(KIND_DATA, attachment=block)
            await sender.drain()
        except WireError as exc:
            raise ExecutorUnreachable(E_EXECUTOR_LOST, "upload to the executor failed: %s" % exc.message)
        finally:
            await sender.close()

    @staticmethod
    def _check_summary(what, summary, size, digest):
        if summary.get("size") != size:
            raise ExecutorTaskError(E_SIZE_MISMATCH, "%s: received %d bytes, the executor sent %r" % (what, size, summary.get("size")))
        if summary.get("sha256") != digest:
            raise ExecutorTaskError(E_CHECKSUM_MISMATCH, "%s: sha256 of the received bytes differs from the executor's" % what)

    # ------------------------------------------------------------ exec

    async def exec_command(self, command=None, argv=None, stdin=None, shell="/bin/sh", become=None, pty=False,
                           timeout=0, env=None, cwd=None, on_output=None):
        """Run a command; returns (rc, stdout bytes, stderr bytes). ``on_output(stream, data)`` (a coroutine
        function) sees the output as it arrives."""
        receiver = await StreamReceiver(self.nc).start()
        try:
            req = self._base_request(OP_EXEC, receiver.subject)
            req.update(command=command, argv=argv, shell=shell, become=become, pty=pty, timeout=timeout, env=env, cwd=cwd)
            req = dict((k, v) for k, v in req.items() if v is not None)
            stdin = stdin or b""
            inline = b""
            if stdin:
                req["stdin"] = {"size": len(stdin), "sha256": hashlib.sha256(stdin).hexdigest()}
                if self._inline_fits(req, len(stdin)):
                    inline = stdin
            accepted = await self._request(OP_EXEC, req, inline)
            if accepted.get("upload"):
                step = chunk_size(self.nc.max_payload)
                await self._upload(accepted, (stdin[i:i + step] for i in range(0, len(stdin), step)))
            out = {STREAM_STDOUT: bytearray(), STREAM_STDERR: bytearray()}
            while True:
                msg = await self._next(receiver, accepted)
                if msg.kind == KIND_DATA and msg.stream in out:
                    out[msg.stream].extend(msg.data)
                    if on_output is not None:
                        await on_output(msg.stream, msg.data)
                elif msg.kind == KIND_RESULT:
                    result = self._decode(msg.headers, msg.data)
                    for name in (STREAM_STDOUT, STREAM_STDERR):
                        data = bytes(out[name])
                        self._check_summary(name, result.get(name) or {}, len(data), hashlib.sha256(data).hexdigest())
                    return result["rc"], bytes(out[STREAM_STDOUT]), bytes(out[STREAM_STDERR])
                elif msg.kind != KIND_KEEPALIVE:
                    raise ExecutorTaskError(E_STREAM, "unexpected %r message in an exec stream" % msg.kind)
        finally:
            await receiver.close()

    # ------------------------------------------------------------ put

    async def put_file(self, local_path, remote_path, mode=None):
        """Copy a local file to the executor's host: complete and verified, or not at all."""
        digest = hashlib.sha256()
        size = 0
        with open(local_path, "rb") as handle:
            for block in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(block)
                size += len(block)
        if mode is None:
            mode = os.stat(local_path).st_mode & 0o7777
        receiver = await StreamReceiver(self.nc).start()
        try:
            req = self._base_request(OP_PUT, receiver.subject)
            req.update(path=remote_path, size=size, sha256=digest.hexdigest(), mode=mode)
            with open(local_path, "rb") as handle:
                inline = handle.read() if size and self._inline_fits(req, size) else b""
                accepted = await self._request(OP_PUT, req, inline)
                if accepted.get("upload"):
                    step = chunk_size(self.nc.max_payload)
                    await self._upload(accepted, iter(lambda: handle.read(step), b""))
            result = await self._result(receiver, accepted, OP_PUT)
            self._check_summary("put %s" % remote_path, result, size, digest.hexdigest())
            return result
        finally:
            await receiver.close()

    # ------------------------------------------------------------ fetch

    async def fetch_file(self, remote_path, local_path):
        """Copy a file from the executor's host: written to a temp file, verified, renamed."""
        receiver = await StreamReceiver(self.nc).start()
        target = AtomicFile(os.path.abspath(local_path))
        try:
            req = self._base_request(OP_FETCH, receiver.subject)
            req["path"] = remote_path
            accepted = await self._request(OP_FETCH, req)
            while True:
                msg = await self._next(receiver, accepted)
                if msg.kind == KIND_DATA:
                    target.write(msg.data)
                elif msg.kind == KIND_RESULT:
                    result = self._decode(msg.headers, msg.data)
                    self._check_summary("fetch %s" % remote_path, result, target.size, target.sha256())
                    target.commit()
                    return result
                elif msg.kind != KIND_KEEPALIVE:
                    raise ExecutorTaskError(E_STREAM, "unexpected %r message in a fetch stream" % msg.kind)
        finally:
            target.discard()
            await receiver.close()

    # ------------------------------------------------------------ transfer

    async def upload_object(self, bucket, name, local_path, sha256):
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

    async def transfer(self, path, bucket=None, object_name=None, source_path=None, sha256=None, mode=None, check=False):
        """Have the executor place an Object Store object (or a file of its own host) at ``path``; returns
        its result: changed, sha256, size, before."""
        receiver = await StreamReceiver(self.nc).start()
        try:
            req = self._base_request(OP_TRANSFER, receiver.subject)
            source = {"bucket": bucket, "object": object_name} if object_name is not None else {"path": source_path}
            req.update(source=source, path=path, check=check)
            if sha256 is not None:
                req["sha256"] = sha256
            if mode is not None:
                req["mode"] = mode
            return await self._result(receiver, await self._request(OP_TRANSFER, req), OP_TRANSFER)
        finally:
            await receiver.close()

    # ------------------------------------------------------------ BK-Lite protocol

    async def bklite_call(self, method, request, timeout):
        """One BK-Lite request (wire/bklite.py) to the executors with our instance id; returns the reply dict.
        Nobody subscribed is reported like our own protocol does, with what discovery can see."""
        subj = bklite.subject(method, self.instance_id)
        try:
            msg = await self.nc.request(subj, bklite.pack_request(request), timeout=timeout)
        except nats.errors.NoRespondersError:
            compat = [e for e in await self.discover(DISCOVERY_WAIT) if e.get("bklite")]
            served = sorted(set(i for e in compat for i in e["instances"]))
            raise ExecutorUnreachable(E_NO_RESPONDERS, (
                "no executor subscribes to %r (BK-Lite protocol, instance id %r) on %s. natsops executors with "
                "--bklite-compat online serve: %s. BK-Lite's own executors cannot be discovered: check that the "
                "executor's nats_instanceId is exactly %r, or address one of the instance ids above."
            ) % (subj, self.instance_id, self.servers, ", ".join(repr(i) for i in served) or "none", self.instance_id),
                {"subject": subj, "instance_id": self.instance_id, "compat_instances": served})
        except nats.errors.TimeoutError:
            raise ExecutorUnreachable(E_EXECUTOR_LOST, "no reply on %r within %.0f s (BK-Lite protocol)" % (subj, timeout))
        try:
            return bklite.parse_reply(msg.data)
        except bklite.BkliteError as exc:
            raise ExecutorTaskError(E_STREAM, exc.message)

    async def object_digest(self, bucket, name):
        """sha256 (hex) of an Object Store object, or None when the bucket or object is missing."""
        try:
            return object_digest_hex((await (await self.nc.jetstream().object_store(bucket)).get_info(name)).digest)
        except nats.js.errors.NotFoundError:
            return None

    async def bklite_health(self, wait=DISCOVERY_WAIT):
        """health.check replies of every executor subscribed for our instance id (BK-Lite's own executors
        all answer; ours answer once per queue group)."""
        replies = await self._collect(bklite.subject(bklite.HEALTH_CHECK, self.instance_id), wait,
                                      bklite.pack_request({"execute_timeout": 5}))
        return [r for r in replies if isinstance(r, dict) and r.get("status")]

    # ------------------------------------------------------------ discovery

    async def _collect(self, subj, wait, payload=b""):
        replies = []
        last = [time.monotonic()]
        inbox = self.nc.new_inbox()

        async def on_reply(msg):
            last[0] = time.monotonic()
            try:
                replies.append(json.loads(msg.data.decode("utf-8")))
            except ValueError:
                pass  # not a micro service reply; ignore

        sub = await self.nc.subscribe(inbox, cb=on_reply)
        try:
            await self.nc.publish(subj, payload, reply=inbox)
            started = time.monotonic()
            while time.monotonic() - started < wait:
                await asyncio.sleep(0.05)
                if replies and time.monotonic() - last[0] >= DISCOVERY_QUIET:
                    break
        finally:
            await sub.unsubscribe()
        return replies

    async def discover(self, wait=DISCOVERY_WAIT, stats=False):
        """Every executor online (all namespaces), as records; with stats=True also their load."""
        records = []
        for info in await self._collect("$SRV.INFO.%s" % SERVICE_NAME, wait):
            record = parse_executor_info(info)
            if record is not None:
                records.append(record)
        if stats and records:
            by_id = dict((r["id"], r) for r in records)
            for reply in await self._collect("$SRV.STATS.%s" % SERVICE_NAME, wait):
                record = by_id.get(reply.get("id")) if isinstance(reply, dict) else None
                endpoints = reply.get("endpoints") or [] if record else []
                if record is not None and endpoints:
                    record["load"] = endpoints[0].get("data") or {}
                    record["requests"] = sum(e.get("num_requests", 0) for e in endpoints)
        records.sort(key=lambda r: (r["namespace"], r["hostname"], r["id"] or ""))
        return records

    def serving(self, executors, instance_id=None):
        """Executors (from discover) in our namespace that serve an instance id."""
        instance_id = instance_id or self.instance_id
        return [e for e in executors if e["namespace"] == self.namespace and serves(e, instance_id)]


class ExecutorClient:
    """Synchronous client with its own event loop and NATS connection. One per Ansible connection or module run."""

    def __init__(self, nats_options, instance_id, namespace="natsops", connect_timeout=10.0,
                 keepalive=DEFAULT_KEEPALIVE, name="natsops.fleet", target=None):
        self.nats_options = nats_options
        self.name = name
        self.connect_timeout = float(connect_timeout)
        servers = ",".join(wire_connect.server_list(nats_options.get("servers")))
        # validates instance id and namespace before anything is sent
        self.core = AsyncExecutorClient(None, instance_id, namespace, connect_timeout, keepalive, servers, target)
        self._loop = None

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def connect(self):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        self.core.nc = self._run(open_nats(self.nats_options, self.name, self.connect_timeout))
        return self

    def close(self):
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

    def exec_command(self, *args, **kwargs):
        return self._run(self.core.exec_command(*args, **kwargs))

    def put_file(self, local_path, remote_path, mode=None):
        return self._run(self.core.put_file(local_path, remote_path, mode))

    def fetch_file(self, remote_path, local_path):
        return self._run(self.core.fetch_file(remote_path, local_path))

    def transfer(self, path, **kwargs):
        return self._run(self.core.transfer(path, **kwargs))

    def object_digest(self, bucket, name):
        return self._run(self.core.object_digest(bucket, name))

    def bklite_health(self, wait=DISCOVERY_WAIT):
        return self._run(self.core.bklite_health(wait))

    def bklite_call(self, method, request, timeout):
        return self._run(self.core.bklite_call(method, request, timeout))

    def publisher(self):
        """The connection's publish coroutine function (for output line events)."""
        return self.core.nc.publish

    def flush_events(self, events):
        """Publish what a bklite.LineEvents still holds and make sure the server has it all."""
        self._run(events.flush())
        self._run(self.core.nc.flush(timeout=5))

    def upload_object(self, bucket, name, local_path, sha256):
        return self._run(self.core.upload_object(bucket, name, local_path, sha256))

    def discover(self, wait=DISCOVERY_WAIT, stats=False):
        return self._run(self.core.discover(wait, stats))

    def serving(self, executors, instance_id=None):
        return self.core.serving(executors, instance_id)
