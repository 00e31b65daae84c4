# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``--bklite-compat``: the BK-Lite nats-executor subjects, served by this executor.

An unmodified BK-Lite server drives us with its own envelope and reads its own reply fields
(the contract is ``_wire/bklite.py``). The work is done by the same code as our own protocol
(jobs.py on the executor's hosts/), which is where it improves on the original without breaking it:

- the subjects are served in our queue group: several executors sharing an instance id share
  the load and a request runs once (BK-Lite's executors all run it);
- requests run concurrently (bounded by ``max_jobs``), not one at a time per subject;
- SSH host keys are checked (``ssh_known_hosts``, policy ``strict`` unless configured otherwise),
  connections are pooled, and files go over SFTP (temp file + rename), never ``sshpass``/``scp``;
- a timeout kills the whole process group; execute replies also carry ``exit_code``;
- ``unzip.local`` checks every entry before writing any (nothing half-extracted);
- with neither password nor private key, an SSH request uses the executor's own identities.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
import zipfile
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Tuple

from natsops_executor import jobs
from natsops_executor._wire import bklite as bk
from natsops_executor._wire.atomic import AtomicFile
from natsops_executor._wire.contract import (
    E_HOST_KEY, E_SPAWN, E_TARGET_AUTH, E_TARGET_UNREACHABLE, E_TIMEOUT, KIND_DATA, WireError, chunk_size,
)
from natsops_executor._wire.messages import ExecRequest, Target
from natsops_executor.hosts.base import Host

try:
    from natsops_executor import sshpool
except ImportError:  # without paramiko: local subjects only (service.py says so at start)
    sshpool = None  # type: ignore[assignment]

if TYPE_CHECKING:  # pragma: no cover
    from natsops_executor.audit import AuditTrail
    from natsops_executor.service import JobBook

log = logging.getLogger("natsops_executor")


class _Capture:
    """Stands in for a StreamSender under jobs.run_command: keeps the output for the one reply (stdout
    and stderr share BK-Lite's cap, first come first kept) and publishes each line to
    ``stream_log_topic`` when the request asks for it."""

    def __init__(self, nc: Any, req: Dict[str, Any]) -> None:
        self.kept = {"stdout": bytearray(), "stderr": bytearray()}
        self.size = 0
        self.dropped = False
        self.lines = None
        if req.get("stream_logs") and req.get("stream_log_topic"):
            self.lines = bk.LineEvents(nc.publish, req["stream_log_topic"], req.get("execution_id"), on_error=lambda exc: log.info(
                "bklite: could not publish an output line to %s: %s", req["stream_log_topic"], exc))

    async def send(self, kind: str, document: Any = None, attachment: bytes = b"", stream: Optional[str] = None) -> None:
        if kind == KIND_DATA and attachment and stream is not None:
            room = bk.OUTPUT_LIMIT - self.size
            if len(attachment) > room:
                self.dropped = True
            keep = attachment[:max(room, 0)]
            self.kept[stream].extend(keep)
            self.size += len(keep)
            if self.lines is not None:
                await self.lines.feed(stream, attachment)

    async def flush(self) -> None:
        if self.lines is not None:
            await self.lines.flush()

    def output(self) -> str:
        return bk.capped_output(self.kept["stdout"], self.kept["stderr"], self.dropped)


def _audited(body: bytes) -> Dict[str, Any]:
    """What an audit record says of a BK-Lite request: its command or paths and target, never credentials."""
    try:
        doc = json.loads(body.decode("utf-8"))["args"][0]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return {}
    if not isinstance(doc, dict):
        return {}
    fields = {k: doc.get(k) for k in ("command", "source_path", "target_path", "zip_path", "dest_dir", "file_key")
              if isinstance(doc.get(k), str)}
    if isinstance(doc.get("host"), str):
        fields["target"] = "%s@%s:%s" % (doc.get("user"), doc.get("host"), doc.get("port") or 22)
    return fields


def _exec_request(timeout: float, command: Optional[str] = None, argv: Optional[List[str]] = None,
                  env: Optional[Dict[str, str]] = None) -> ExecRequest:
    """Our exec request for a BK-Lite execute (its reply goes back through BK-Lite's request/reply, so the
    request's own reply subject is never used)."""
    return ExecRequest.new("bklite", command=command, argv=argv, env=env, timeout=timeout)


def _target(req: Dict[str, Any]) -> Target:
    """Our SSH target from a BK-Lite request; no credentials = the executor's own identities."""
    host, user = req["host"].strip(), req["user"].strip()
    if not host or not user:
        raise bk.BkliteError(bk.INVALID_REQUEST, "host and user are required")
    try:
        target = Target(host=host, port=req["port"] or 22, user=user, password=req["password"] or None,
                        private_key=req["private_key"] or None,
                        passphrase=(req["passphrase"] or None) if req["private_key"] else None)
    except WireError as exc:
        raise bk.BkliteError(bk.INVALID_REQUEST, exc.message) from None
    if target.private_key and sshpool is not None:
        try:
            sshpool.load_private_key(text=target.private_key, passphrase=target.passphrase)
        except ValueError as exc:
            raise bk.BkliteError(bk.INVALID_REQUEST, "Failed to parse private key: %s" % exc) from None
    return target


def _ssh_failure(exc: WireError) -> bk.BkliteError:
    """An SSH connection WireError (sshpool.py, with details.stage) as a BK-Lite ssh.execute failure."""
    text = exc.message
    if exc.code == E_TARGET_AUTH:
        return bk.BkliteError(bk.DEPENDENCY_FAILURE, "SSH authentication failed: %s" % text, bk.STAGE_SSH_DIAL, bk.CATEGORY_AUTH)
    if exc.code == E_HOST_KEY:
        return bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to create SSH client: %s" % text, bk.STAGE_SSH_DIAL,
                              bk.CATEGORY_DEPENDENCY)
    stage = (exc.details or {}).get("stage")
    if exc.code == E_TARGET_UNREACHABLE and stage in ("session", "sftp"):
        return bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to create SSH session: %s" % text, bk.STAGE_SESSION_CREATE,
                              bk.CATEGORY_DEPENDENCY)
    if exc.code == E_TARGET_UNREACHABLE:
        return bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to create SSH client: %s" % text, bk.STAGE_SSH_DIAL,
                              bk.CATEGORY_NETWORK)
    if exc.code == E_SPAWN:
        return bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to create SSH session: %s" % text, bk.STAGE_SESSION_CREATE,
                              bk.CATEGORY_DEPENDENCY)
    return bk.BkliteError(bk.EXECUTION_FAILURE, text, bk.STAGE_COMMAND_RUN, bk.CATEGORY_REMOTE_EXIT)


async def _probe(host: str, port: int, remaining: float) -> Optional[Tuple[str, str]]:
    """BK-Lite's connection_test / fast_fail: a plain TCP connect first, with a fifth of the budget (1-5 s)."""
    timeout = min(max(remaining / 5.0, 1.0), 5.0, remaining)
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.close()
        return None
    except asyncio.TimeoutError:
        return "timeout", "%gs" % timeout
    except (OSError, socket.gaierror) as exc:
        return "error", exc.strerror or str(exc)


class CompatServer:
    """The seven BK-Lite subjects for every instance id, served by the executor's NATS connection, its hosts
    (``host_for``) and its job accounting (``book``)."""

    def __init__(self, nc: Any, host_for: Callable[[Optional[Target]], Host], book: "JobBook",
                 instances: List[str], audit: "AuditTrail") -> None:
        self.nc = nc
        self.audit = audit
        self.host_for = host_for
        self.book = book
        self.instances = instances
        self._methods: Dict[str, Callable[[Dict[str, Any]], Awaitable[Any]]] = {
            bk.LOCAL_EXECUTE: self._local_execute, bk.SSH_EXECUTE: self._ssh_execute,
            bk.DOWNLOAD_LOCAL: self._download_local, bk.DOWNLOAD_REMOTE: self._download_remote,
            bk.UPLOAD_REMOTE: self._upload_remote, bk.UNZIP_LOCAL: self._unzip_local,
        }

    async def add_endpoints(self, service: Any, first_index: int) -> int:
        index = first_index
        for inst in self.instances:
            for method in bk.METHODS:
                index += 1
                subj = bk.subject(method, inst)
                await service.add_endpoint(name="bklite-%d" % index, subject=subj, handler=self.book.handler(functools.partial(self._serve, method)),
                                           metadata={"instance": inst, "op": method, "protocol": "bklite"})
                log.info("serving %s (BK-Lite compat, instance %s)", subj, inst)
        return index

    async def _serve(self, method: str, msg: Any) -> None:
        started = time.monotonic()
        instance_id = bk.method_of(msg.subject)[1]
        doc = None
        try:
            if method == bk.HEALTH_CHECK:
                doc = bk.health_reply(instance_id)
            else:
                async with self.book.run() as outcome:
                    result = await self._methods[method](bk.unpack_request(method, msg.data))
                    doc = result if isinstance(result, dict) else bk.reply(instance_id, result)
                    doc["instance_id"] = instance_id
                    outcome.ok = bool(doc.get("success"))
        except bk.BkliteError as exc:
            doc = bk.reply(instance_id, error=exc)
        except asyncio.CancelledError:
            doc = bk.reply(instance_id, error=bk.BkliteError(bk.EXECUTION_FAILURE, "the executor is shutting down"))
            raise
        except Exception as exc:  # pylint: disable=broad-except
            log.exception("bklite %s crashed", method)
            doc = bk.reply(instance_id, error=bk.BkliteError(bk.EXECUTION_FAILURE, "executor error: %r" % exc))
        finally:
            if doc is not None and method != bk.HEALTH_CHECK:
                self.audit.record(instance_id, "bklite:" + method, "ok" if doc.get("success") else "failed",
                                  code=doc.get("code"), message=doc.get("error"), **_audited(msg.data))
            if doc is not None:
                log.info("bklite %s on %s: %s%s %.3fs", method, instance_id, "ok" if doc.get("success") else doc.get("code"),
                         "" if doc.get("success") else " (%s)" % doc.get("error", "")[:200], time.monotonic() - started)
                try:
                    await msg.respond(bk.fit(doc, self.nc.max_payload))
                except Exception as exc:  # pylint: disable=broad-except
                    log.warning("bklite: could not reply on %s: %s", msg.subject, exc)

    def _ssh_host(self, method: str, target: Target) -> Host:
        try:
            return self.host_for(target)
        except WireError as exc:
            raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "%s is unavailable on this executor: %s" % (method, exc.message)) from None

    # ------------------------------------------------------------ execute

    async def _run(self, req: Dict[str, Any], host: Host, exec_req: ExecRequest, remote: bool = False) -> Dict[str, Any]:
        """A checked local.execute or (``remote``) ssh.execute request on ``host``: run it, build the reply."""
        capture = _Capture(self.nc, req)
        started = time.monotonic()
        timeout = req["execute_timeout"]
        try:
            result = await jobs.run_command(host, exec_req, b"", capture, chunk_size(self.nc.max_payload))  # type: ignore[arg-type]
        except WireError as exc:
            await capture.flush()
            elapsed = "%.6fs" % (time.monotonic() - started)
            if exc.code == E_TIMEOUT:
                if not remote:
                    raise bk.BkliteError(bk.TIMEOUT, "Command timed out after %s (timeout: %ds)" % (elapsed, timeout),
                                         result=capture.output()) from None
                raise bk.BkliteError(bk.TIMEOUT, "SSH execution timed out after %s (timeout: %ds)" % (elapsed, timeout),
                                     bk.STAGE_COMMAND_RUN, bk.CATEGORY_REMOTE_TIMEOUT, result=capture.output()) from None
            if not remote:
                raise bk.BkliteError(bk.EXECUTION_FAILURE, "failed to start command: %s" % exc.message) from None
            raise _ssh_failure(exc) from None
        await capture.flush()
        rc = result.rc
        output = capture.output()
        if rc == 0:
            return {"result": output, "instance_id": "", "success": True, "exit_code": 0}
        if remote:
            error = bk.BkliteError(bk.EXECUTION_FAILURE, "Command execution failed: Process exited with status %d" % rc,
                                   bk.STAGE_COMMAND_RUN, bk.CATEGORY_REMOTE_EXIT, result=output)
        elif result.signal is not None:
            error = bk.BkliteError(bk.EXECUTION_FAILURE, "Command execution failed with exit code -1: signal: %d"
                                   % result.signal, result=output)
        else:
            error = bk.BkliteError(bk.EXECUTION_FAILURE, "Command execution failed with exit code %d: exit status %d"
                                   % (rc, rc), result=output)
        doc = bk.reply("", error=error)
        doc["exit_code"] = rc
        return doc

    async def _local_execute(self, req: Dict[str, Any]) -> Dict[str, Any]:
        req = bk.check_execute(bk.LOCAL_EXECUTE, req)
        exec_req = _exec_request(req["execute_timeout"], argv=bk.shell_argv(req["shell"], req["command"]), env=req["env"] or None)
        return await self._run(req, self.host_for(None), exec_req)

    async def _ssh_execute(self, req: Dict[str, Any]) -> Dict[str, Any]:
        bk.check_execute(bk.SSH_EXECUTE, req)
        target = _target(req)
        host = self._ssh_host(bk.SSH_EXECUTE, target)
        if req["connection_test"]:
            failed = await _probe(target.host, target.port, req["execute_timeout"])
            if failed:
                if failed[0] == "timeout":
                    raise bk.BkliteError(bk.TIMEOUT, "TCP connect timed out after %s" % failed[1], bk.STAGE_TCP_CONNECT,
                                         bk.CATEGORY_NETWORK)
                raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "TCP connect failed: dial tcp %s:%d: %s" % (
                    target.host, target.port, failed[1]), bk.STAGE_TCP_CONNECT, bk.CATEGORY_NETWORK)
        return await self._run(req, host, _exec_request(req["execute_timeout"], command=req["command"]), remote=True)

    # ------------------------------------------------------------ files

    @staticmethod
    def _check_download(req: Dict[str, Any], need_target: bool = True) -> float:
        """BK-Lite's download checks, in its order and words; returns the deadline."""
        names = [req[k].strip() for k in ("bucket_name", "file_key", "file_name")]
        if not all(names) or (need_target and not req["target_path"].strip()):
            raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to download file: bucket_name, file_key, file_name, "
                                                        "and target_path are required")
        name = req["file_name"].strip()
        if name in (".", "..") or "/" in name or "\\" in name:
            raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to download file: file_name must not contain path "
                                                        "separators or be absolute")
        return CompatServer._deadline(req, bk.DEPENDENCY_FAILURE, "Failed to download file: ")

    async def _fetch_object(self, req: Dict[str, Any], directory: str, deadline: float) -> str:
        """Object Store object -> directory/file_name (temp file, fsync, rename)."""
        name = req["file_name"].strip()
        import nats.js.errors  # pylint: disable=import-outside-toplevel
        try:
            store = await self.nc.jetstream().object_store(req["bucket_name"])
        except nats.js.errors.BucketNotFoundError:
            raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to download file: failed to create JetStream client: "
                                 "object store bucket %r not found: nats: bucket not found" % req["bucket_name"]) from None
        path = os.path.join(directory, name)
        try:
            target = AtomicFile(path)
        except OSError as exc:
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "Failed to download file: failed to finalize downloaded file: "
                                 "failed to create temporary file in %s: %s" % (directory, exc.strerror or exc)) from None
        try:
            await asyncio.wait_for(store.get(req["file_key"], writeinto=target), max(deadline - time.monotonic(), 0.01))
            target.commit(0o644)
        except asyncio.TimeoutError:
            raise bk.BkliteError(bk.TIMEOUT, "Failed to download file: download operation timed out: context deadline "
                                             "exceeded") from None
        except nats.js.errors.NotFoundError:
            raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to download file: failed to download file: failed to get "
                                 "object from store with key %s: nats: object not found" % req["file_key"]) from None
        except nats.js.errors.DigestMismatchError:
            raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to download file: failed to download file: digest "
                                 "mismatch for key %s; nothing was written" % req["file_key"]) from None
        except OSError as exc:
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "Failed to download file: failed to finalize downloaded file: %s"
                                 % (exc.strerror or exc)) from None
        finally:
            target.discard()
        return path

    async def _download_local(self, req: Dict[str, Any]) -> str:
        deadline = self._check_download(req)
        if not os.path.isdir(req["target_path"]):
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "Failed to download file: failed to finalize downloaded file: "
                                 "target directory %s does not exist" % req["target_path"])
        await self._fetch_object(req, req["target_path"], deadline)
        return "File successfully downloaded to %s/%s" % (req["target_path"], req["file_name"])

    @staticmethod
    def _deadline(req: Dict[str, Any], code: str = bk.INVALID_REQUEST, prefix: str = "") -> float:
        if req["execute_timeout"] <= 0:
            raise bk.BkliteError(code, prefix + "execute timeout must be greater than 0")
        return time.monotonic() + req["execute_timeout"]

    async def _copy(self, req: Dict[str, Any], source: str, dest: str, deadline: float) -> str:
        target = _target(req)
        host = self._ssh_host("remote copy", target)
        try:
            files, size, landed = await host.copy_in(source, dest, deadline)  # type: ignore[attr-defined]
        except WireError as exc:
            if exc.code == E_TIMEOUT:
                raise bk.BkliteError(bk.TIMEOUT, "SCP transfer timed out: %s" % exc.message) from None
            failure = _ssh_failure(exc)
            code = bk.EXECUTION_FAILURE if failure.stage == bk.STAGE_COMMAND_RUN else failure.code
            raise bk.BkliteError(code, failure.message) from None
        log.info("bklite: copied %s to %s:%s (%d file(s), %d bytes)", source, target.where(), landed, files, size)
        return ""

    async def _download_remote(self, req: Dict[str, Any]) -> str:
        self._deadline(req)
        deadline = self._check_download(req, need_target=False)
        if req["fast_fail"]:
            failed = await _probe(req["host"], req["port"] or 22, req["execute_timeout"])
            where = "%s:%d" % (req["host"], req["port"] or 22)
            if failed and failed[0] == "timeout":
                raise bk.BkliteError(bk.TIMEOUT, "远程主机端口连接超时: %s" % where)
            if failed:
                raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "远程主机端口不可达: %s, error=%s" % (where, failed[1]))
        try:
            staging = tempfile.mkdtemp(prefix="nats-executor-", dir=req["local_path"] or None)
        except OSError as exc:
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "Failed to prepare local staging path: %s"
                                 % (exc.strerror or exc)) from None
        try:
            path = await self._fetch_object(req, staging, deadline)
            return await self._copy(req, path, req["target_path"] or ".", deadline)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def _upload_remote(self, req: Dict[str, Any]) -> str:
        deadline = self._deadline(req)
        if not os.path.exists(req["source_path"]):
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "source_path %s does not exist on the executor host"
                                 % req["source_path"])
        return await self._copy(req, req["source_path"], req["target_path"] or ".", deadline)

    async def _unzip_local(self, req: Dict[str, Any]) -> str:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, unzip, req["zip_path"], req["dest_dir"])
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "Failed to unzip file: %s" % exc) from None


def unzip(zip_path: str, dest_dir: str) -> str:
    """Extract ``zip_path`` into ``dest_dir``; returns the first path component of the first entry.
    Every entry is checked first (absolute names, zip-slip, links and devices refused), so a bad
    archive writes nothing. Raises ValueError/OSError with BK-Lite's words."""
    if not dest_dir.strip():
        raise ValueError("destination directory is required")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError("failed to open zip file: %s" % exc) from None
    with archive:
        entries = archive.infolist()
        if not entries:
            raise ValueError("zip file is empty")
        root = os.path.normpath(dest_dir)
        plan = []
        for info in entries:
            name = info.filename
            if name.startswith("/") or name.startswith("\\"):
                raise ValueError("illegal file path: %s" % name)
            path = os.path.normpath(os.path.join(root, name))
            if not path.startswith(root.rstrip(os.sep) + os.sep):
                raise ValueError("illegal file path: %s" % path)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if info.is_dir():
                plan.append((info, path, True))
            elif kind in (0, stat.S_IFREG):
                plan.append((info, path, False))
            else:
                raise ValueError("unsupported file type in zip: %s" % name)
        os.makedirs(root, 0o755, exist_ok=True)
        for info, path, is_dir in plan:
            if is_dir:
                os.makedirs(path, 0o755, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            target = AtomicFile(path)
            try:
                with archive.open(info) as src:
                    while True:
                        block = src.read(1 << 20)
                        if not block:
                            break
                        target.write(block)
                target.commit(stat.S_IMODE(info.external_attr >> 16) or 0o644)
            finally:
                target.discard()
    return entries[0].filename.split("/", 1)[0]
