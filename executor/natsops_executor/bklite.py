# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``--bklite-compat``: the BK-Lite nats-executor subjects, served by this executor.

An unmodified BK-Lite server drives us with its own envelope and reads its own reply fields
(the contract is ``_wire/bklite.py``). The work is done by the same code as our own protocol
(jobs.py, ssh.py), which is where it improves on the original without breaking it:

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
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
import zipfile

from natsops_executor import jobs
try:
    from natsops_executor import ssh
except ImportError:  # without paramiko: local subjects only (service.py says so at start)
    ssh = None
from natsops_executor._wire import bklite as bk
from natsops_executor._wire.atomic import AtomicFile
from natsops_executor._wire.contract import (
    E_HOST_KEY, E_SPAWN, E_TARGET_AUTH, E_TARGET_UNREACHABLE, E_TIMEOUT, KIND_DATA, KIND_RESULT, WireError, chunk_size,
)

log = logging.getLogger("natsops_executor")


class _Capture:
    """Stands in for a StreamSender under jobs.supervise: keeps the output for the one reply (stdout
    and stderr share BK-Lite's cap, first come first kept) and publishes each line to
    ``stream_log_topic`` when the request asks for it."""

    def __init__(self, nc, req):
        self.kept = {"stdout": bytearray(), "stderr": bytearray()}
        self.size = 0
        self.dropped = False
        self.result = None
        self.lines = None
        if req.get("stream_logs") and req.get("stream_log_topic"):
            self.lines = bk.LineEvents(nc.publish, req["stream_log_topic"], req.get("execution_id"), on_error=lambda exc: log.info(
                "bklite: could not publish an output line to %s: %s", req["stream_log_topic"], exc))

    async def send(self, kind, document=None, attachment=b"", stream=None):
        if kind == KIND_RESULT:
            self.result = document
        elif kind == KIND_DATA and attachment:
            room = bk.OUTPUT_LIMIT - self.size
            if len(attachment) > room:
                self.dropped = True
            keep = attachment[:max(room, 0)]
            self.kept[stream].extend(keep)
            self.size += len(keep)
            if self.lines is not None:
                await self.lines.feed(stream, attachment)

    async def flush(self):
        if self.lines is not None:
            await self.lines.flush()

    def output(self):
        return bk.capped_output(self.kept["stdout"], self.kept["stderr"], self.dropped)


def _exec_request(command, argv, timeout, env=None, target=None):
    """A request for jobs.supervise / ssh.run_exec (our own exec schema, already normalised)."""
    return {"id": str(uuid.uuid4()), "command": command, "argv": argv, "shell": "/bin/sh", "cwd": None, "env": env,
            "timeout": timeout, "stdin": None, "become": None, "pty": False, "keepalive": 1.0, "target": target}


def _target(req):
    """Our SSH target from a BK-Lite request; no credentials = the executor's own identities."""
    return {"host": req["host"].strip(), "port": req["port"] or 22, "user": req["user"].strip(), "identity": None,
            "password": req["password"] or None, "private_key": req["private_key"] or None,
            "passphrase": (req["passphrase"] or None) if req["private_key"] else None}


def _ssh_failure(exc):
    """An SSH connection WireError (ssh.py, with details.stage) as a BK-Lite ssh.execute failure."""
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


async def _probe(host, port, remaining):
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
    """The seven BK-Lite subjects for every instance id of an Executor (service.py)."""

    def __init__(self, executor):
        self.ex = executor

    async def add_endpoints(self, service, first_index):
        index = first_index
        for inst in self.ex.cfg.instances:
            for method in bk.METHODS:
                index += 1
                subj = bk.subject(method, inst)
                await service.add_endpoint(name="bklite-%d" % index, subject=subj, handler=self._handler(method),
                                           metadata={"instance": inst, "op": method, "protocol": "bklite"})
                log.info("serving %s (BK-Lite compat, instance %s)", subj, inst)
        return index

    def _handler(self, method):
        async def handle(request):
            self.ex.start_job(self._serve(method, request))
        return handle

    async def _serve(self, method, request):
        started = time.monotonic()
        instance_id = bk.method_of(request.subject)[1]
        doc = None
        try:
            if method == bk.HEALTH_CHECK:
                doc = bk.health_reply(instance_id)
            else:
                req = bk.unpack_request(method, request.data)
                async with self.ex.slots:
                    self.ex.running += 1
                    try:
                        result = await getattr(self, "_" + method.replace(".", "_"))(req)
                    finally:
                        self.ex.running -= 1
                doc = result if isinstance(result, dict) else bk.reply(instance_id, result)
                doc["instance_id"] = instance_id
        except bk.BkliteError as exc:
            doc = bk.reply(instance_id, error=exc)
        except asyncio.CancelledError:
            doc = bk.reply(instance_id, error=bk.BkliteError(bk.EXECUTION_FAILURE, "the executor is shutting down"))
            raise
        except Exception as exc:  # pylint: disable=broad-except
            log.exception("bklite %s crashed", method)
            doc = bk.reply(instance_id, error=bk.BkliteError(bk.EXECUTION_FAILURE, "executor error: %r" % exc))
        finally:
            if doc is not None:
                if doc.get("success"):
                    self.ex.completed += 1
                else:
                    self.ex.failed += 1
                log.info("bklite %s on %s: %s%s %.3fs", method, instance_id, "ok" if doc.get("success") else doc.get("code"),
                         "" if doc.get("success") else " (%s)" % doc.get("error", "")[:200], time.monotonic() - started)
                try:
                    await request.respond(bk.fit(doc, self.ex.nc.max_payload))
                except Exception as exc:  # pylint: disable=broad-except
                    log.warning("bklite: could not reply on %s: %s", request.subject, exc)

    # ------------------------------------------------------------ execute

    async def _run(self, req, target):
        """A checked local.execute (target None) or ssh.execute request: run it, build the reply."""
        capture = _Capture(self.ex.nc, req)
        chunk = chunk_size(self.ex.nc.max_payload)
        started = time.monotonic()
        timeout = req["execute_timeout"]
        try:
            if target is None:
                exec_req = _exec_request(None, bk.shell_argv(req["shell"], req["command"]), timeout, req["env"] or None)
                await jobs.run_exec(exec_req, b"", capture, chunk)
            else:
                await ssh.run_exec(self.ex.ssh, _exec_request(req["command"], None, timeout, target=target), b"",
                                   capture, chunk)
        except WireError as exc:
            await capture.flush()
            elapsed = "%.6fs" % (time.monotonic() - started)
            if exc.code == E_TIMEOUT:
                if target is None:
                    raise bk.BkliteError(bk.TIMEOUT, "Command timed out after %s (timeout: %ds)" % (elapsed, timeout),
                                         result=capture.output())
                raise bk.BkliteError(bk.TIMEOUT, "SSH execution timed out after %s (timeout: %ds)" % (elapsed, timeout),
                                     bk.STAGE_COMMAND_RUN, bk.CATEGORY_REMOTE_TIMEOUT, result=capture.output())
            if target is None:
                raise bk.BkliteError(bk.EXECUTION_FAILURE, "failed to start command: %s" % exc.message)
            raise _ssh_failure(exc)
        await capture.flush()
        rc = capture.result["rc"]
        output = capture.output()
        if rc == 0:
            return {"result": output, "instance_id": "", "success": True, "exit_code": 0}
        if target is not None:
            error = bk.BkliteError(bk.EXECUTION_FAILURE, "Command execution failed: Process exited with status %d" % rc,
                                   bk.STAGE_COMMAND_RUN, bk.CATEGORY_REMOTE_EXIT, result=output)
        elif "signal" in capture.result:
            error = bk.BkliteError(bk.EXECUTION_FAILURE, "Command execution failed with exit code -1: signal: %d"
                                   % capture.result["signal"], result=output)
        else:
            error = bk.BkliteError(bk.EXECUTION_FAILURE, "Command execution failed with exit code %d: exit status %d"
                                   % (rc, rc), result=output)
        doc = bk.reply("", error=error)
        doc["exit_code"] = rc
        return doc

    async def _local_execute(self, req):
        return await self._run(bk.check_execute(bk.LOCAL_EXECUTE, req), None)

    async def _ssh_execute(self, req):
        bk.check_execute(bk.SSH_EXECUTE, req)
        self._need_ssh(bk.SSH_EXECUTE)
        target = self._check_key(_target(req))
        if req["connection_test"]:
            failed = await _probe(target["host"], target["port"], req["execute_timeout"])
            if failed:
                if failed[0] == "timeout":
                    raise bk.BkliteError(bk.TIMEOUT, "TCP connect timed out after %s" % failed[1], bk.STAGE_TCP_CONNECT,
                                         bk.CATEGORY_NETWORK)
                raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "TCP connect failed: dial tcp %s:%d: %s" % (
                    target["host"], target["port"], failed[1]), bk.STAGE_TCP_CONNECT, bk.CATEGORY_NETWORK)
        return await self._run(req, target)

    def _need_ssh(self, method):
        if self.ex.ssh is None:
            raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "%s is unavailable on this executor: paramiko is not installed" % method)

    @staticmethod
    def _check_key(target):
        if target["private_key"]:
            try:
                ssh.load_private_key(text=target["private_key"], passphrase=target["passphrase"])
            except ValueError as exc:
                raise bk.BkliteError(bk.INVALID_REQUEST, "Failed to parse private key: %s" % exc)
        return target

    # ------------------------------------------------------------ files

    @staticmethod
    def _check_download(req, need_target=True):
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

    async def _fetch_object(self, req, directory, deadline):
        """Object Store object -> directory/file_name (temp file, fsync, rename)."""
        name = req["file_name"].strip()
        import nats.js.errors  # pylint: disable=import-outside-toplevel
        try:
            store = await self.ex.nc.jetstream().object_store(req["bucket_name"])
        except nats.js.errors.BucketNotFoundError:
            raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to download file: failed to create JetStream client: "
                                 "object store bucket %r not found: nats: bucket not found" % req["bucket_name"])
        path = os.path.join(directory, name)
        try:
            target = AtomicFile(path)
        except OSError as exc:
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "Failed to download file: failed to finalize downloaded file: "
                                 "failed to create temporary file in %s: %s" % (directory, exc.strerror or exc))
        try:
            await asyncio.wait_for(store.get(req["file_key"], writeinto=target), max(deadline - time.monotonic(), 0.01))
            target.commit(0o644)
        except asyncio.TimeoutError:
            raise bk.BkliteError(bk.TIMEOUT, "Failed to download file: download operation timed out: context deadline exceeded")
        except nats.js.errors.NotFoundError:
            raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to download file: failed to download file: failed to get "
                                 "object from store with key %s: nats: object not found" % req["file_key"])
        except nats.js.errors.DigestMismatchError:
            raise bk.BkliteError(bk.DEPENDENCY_FAILURE, "Failed to download file: failed to download file: digest "
                                 "mismatch for key %s; nothing was written" % req["file_key"])
        except OSError as exc:
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "Failed to download file: failed to finalize downloaded file: %s"
                                 % (exc.strerror or exc))
        finally:
            target.discard()
        return path

    async def _download_local(self, req):
        deadline = self._check_download(req)
        if not os.path.isdir(req["target_path"]):
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "Failed to download file: failed to finalize downloaded file: "
                                 "target directory %s does not exist" % req["target_path"])
        await self._fetch_object(req, req["target_path"], deadline)
        return "File successfully downloaded to %s/%s" % (req["target_path"], req["file_name"])

    @staticmethod
    def _deadline(req, code=bk.INVALID_REQUEST, prefix=""):
        if req["execute_timeout"] <= 0:
            raise bk.BkliteError(code, prefix + "execute timeout must be greater than 0")
        return time.monotonic() + req["execute_timeout"]

    async def _copy(self, req, source, dest, deadline):
        self._need_ssh("remote copy")
        target = self._check_key(_target(req))
        if not target["host"] or not target["user"]:
            raise bk.BkliteError(bk.INVALID_REQUEST, "host and user are required")
        try:
            files, size, landed = await ssh.copy_path(self.ex.ssh, target, source, dest, deadline)
        except WireError as exc:
            if exc.code == E_TIMEOUT:
                raise bk.BkliteError(bk.TIMEOUT, "SCP transfer timed out: %s" % exc.message)
            failure = _ssh_failure(exc)
            code = bk.EXECUTION_FAILURE if failure.stage == bk.STAGE_COMMAND_RUN else failure.code
            raise bk.BkliteError(code, failure.message)
        log.info("bklite: copied %s to %s@%s:%s (%d file(s), %d bytes)", source, target["user"], target["host"], landed,
                 files, size)
        return ""

    async def _download_remote(self, req):
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
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "Failed to prepare local staging path: %s" % (exc.strerror or exc))
        try:
            path = await self._fetch_object(req, staging, deadline)
            return await self._copy(req, path, req["target_path"] or ".", deadline)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def _upload_remote(self, req):
        deadline = self._deadline(req)
        if not os.path.exists(req["source_path"]):
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "source_path %s does not exist on the executor host"
                                 % req["source_path"])
        return await self._copy(req, req["source_path"], req["target_path"] or ".", deadline)

    async def _unzip_local(self, req):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, unzip, req["zip_path"], req["dest_dir"])
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise bk.BkliteError(bk.EXECUTION_FAILURE, "Failed to unzip file: %s" % exc)


def unzip(zip_path, dest_dir):
    """Extract ``zip_path`` into ``dest_dir``; returns the first path component of the first entry.
    Every entry is checked first (absolute names, zip-slip, links and devices refused), so a bad
    archive writes nothing. Raises ValueError/OSError with BK-Lite's words."""
    if not dest_dir.strip():
        raise ValueError("destination directory is required")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError("failed to open zip file: %s" % exc)
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
