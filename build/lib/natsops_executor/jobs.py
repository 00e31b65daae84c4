# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The work itself, on this host: run a command, receive a file, send a file.

Each function talks to its caller only through a StreamSender (events out) and, for
uploads, a StreamReceiver (bytes in); it raises WireError for anything the caller
should see as a structured error.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import pty
import re
import signal
import stat
import termios
import time

from natsops_executor._wire.atomic import AtomicFile
from natsops_executor._wire.contract import (
    E_BECOME, E_BAD_PATH, E_CHECKSUM_MISMATCH, E_IO, E_NOT_FOUND, E_PERMISSION, E_SIZE_MISMATCH, E_SPAWN, E_STREAM,
    E_TIMEOUT, KIND_DATA, KIND_KEEPALIVE, KIND_RESULT, STREAM_FILE, STREAM_STDERR, STREAM_STDOUT, WireError,
    liveness_timeout,
)

log = logging.getLogger("natsops_executor")

KILL_GRACE = 1.0      # seconds between SIGTERM and SIGKILL for a timed-out process group
DRAIN_AFTER_KILL = 2.0  # seconds to wait for pipes to close once the group is dead


def os_error(exc, what):
    """Map an OSError to a WireError with the right code."""
    code = {2: E_NOT_FOUND, 13: E_PERMISSION, 1: E_PERMISSION, 21: E_BAD_PATH, 20: E_BAD_PATH}.get(exc.errno, E_IO)
    return WireError(code, "%s: %s" % (what, exc.strerror or exc), {"errno": exc.errno})


# ---------------------------------------------------------------- exec

class _Become:
    """Privilege escalation handshake, mirroring ansible's local connection."""

    def __init__(self, spec):
        self.success = spec["success"].encode("utf-8")
        self.prompt = re.compile(spec["prompt"].encode("utf-8")) if spec.get("prompt") else None
        self.password = spec.get("password")
        self.deadline = time.monotonic() + spec["timeout"]
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.offsets = {STREAM_STDOUT: 0, STREAM_STDERR: 0}
        self.sent_password = False

    def succeeded(self):
        return any(self.success in line.rstrip() for line in bytes(self.stdout).splitlines(True))

    def prompted(self):
        if self.prompt is None:
            return False
        for name, buf in ((STREAM_STDOUT, self.stdout), (STREAM_STDERR, self.stderr)):
            tail = bytes(buf[self.offsets[name]:])
            if any(self.prompt.match(line.strip()) for line in tail.splitlines()):
                return True
        return False

    def mark_prompt_seen(self):
        self.offsets = {STREAM_STDOUT: len(self.stdout), STREAM_STDERR: len(self.stderr)}

    def leftovers(self):
        """Output of the become stage past the success marker (stdout) and past the prompt (stderr),
        stripped the way ansible-core strips it."""
        out = re.sub(br"^.*?" + re.escape(self.success) + br"\s*", b"", bytes(self.stdout), count=1, flags=re.DOTALL)
        err = bytes(self.stderr)
        if self.prompt is not None and self.sent_password:
            err = re.sub(br"^.*?(?:" + self.prompt.pattern + br")\s*", b"", err, count=1, flags=re.DOTALL)
        return out, err

    def failure(self, reason):
        """A become_failed error quoting what the escalation command said (never the password)."""
        details = {"stdout": bytes(self.stdout).decode("utf-8", "replace")[-4096:],
                   "stderr": bytes(self.stderr).decode("utf-8", "replace")[-4096:]}
        said = (details["stderr"].strip() or details["stdout"].strip()).splitlines()[-3:]
        if said:
            reason = "%s; it said: %s" % (reason, " / ".join(line.strip() for line in said))
        return WireError(E_BECOME, reason, details)


def _kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _controlling_tty():
    # runs in the child after setsid(): make the pty on stdin the controlling terminal (su needs it)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _Digest:
    def __init__(self):
        self.size = 0
        self.hash = hashlib.sha256()

    def update(self, data):
        self.size += len(data)
        self.hash.update(data)

    def summary(self):
        return {"size": self.size, "sha256": self.hash.hexdigest()}


class LocalProcess:
    """A command on this host, as _supervise drives it (the SSH flavour lives in ssh.py)."""

    def __init__(self, proc, primary):
        self.proc = proc
        self.primary = primary  # pty side for become prompts, or None
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.label = "process group %d" % proc.pid
        self.details = {"pgid": proc.pid}

    def wait(self):
        return self.proc.wait()

    def write_password(self, data):
        if self.primary is not None:
            os.write(self.primary, data)
        elif self.proc.stdin is not None:
            self.proc.stdin.write(data)

    async def feed(self, data):
        if self.proc.stdin is None:
            return
        try:
            if data:
                self.proc.stdin.write(data)
                await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command exited without reading all of stdin, like any pipe
        finally:
            self.proc.stdin.close()

    async def terminate(self):
        """Timeout: TERM the whole process group, KILL it after a grace period."""
        _kill_group(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), KILL_GRACE)
        except asyncio.TimeoutError:
            _kill_group(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    async def cleanup(self):
        if self.proc.returncode is None:
            _kill_group(self.proc.pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(self.proc.wait(), DRAIN_AFTER_KILL)
            except asyncio.TimeoutError:
                log.warning("process group %d did not exit after SIGKILL", self.proc.pid)
        if self.primary is not None:
            os.close(self.primary)
            self.primary = None


async def run_exec(req, stdin_data, sender, chunk):
    """Run one command on this host. Streams stdout/stderr, keepalives, then a result; raises WireError."""
    argv = req["argv"] or [req["shell"], "-c", req["command"]]
    env = dict(os.environ)
    env.update(req["env"] or {})
    use_pty = req["pty"]
    primary = secondary = None
    if use_pty:
        primary, secondary = pty.openpty()
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=secondary if use_pty else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=req["cwd"], env=env, start_new_session=True,
            preexec_fn=_controlling_tty if use_pty else None)
    except OSError as exc:
        if primary is not None:
            os.close(primary)
            os.close(secondary)
        raise WireError(E_SPAWN, "cannot start %s: %s" % (argv[0], exc.strerror or exc), {"errno": exc.errno})
    if secondary is not None:
        os.close(secondary)
    process = LocalProcess(proc, primary)
    try:
        return await supervise(req, process, stdin_data, sender, chunk, started)
    finally:
        await process.cleanup()


async def supervise(req, proc, stdin_data, sender, chunk, started):
    """Drive a started command (LocalProcess or ssh.RemoteProcess): become handshake, stdin, output
    streams, keepalives, timeout; send the result."""
    events = asyncio.Queue(maxsize=8)
    become = _Become(req["become"]) if req["become"] else None
    become_done = asyncio.Event()
    if become is None:
        become_done.set()

    async def pump(name, reader):
        while True:
            data = await reader.read(chunk)
            await events.put((name, data))
            if not data:
                return

    async def feed_stdin():
        await become_done.wait()
        await proc.feed(stdin_data)

    tasks = [asyncio.ensure_future(pump(STREAM_STDOUT, proc.stdout)),
             asyncio.ensure_future(pump(STREAM_STDERR, proc.stderr)),
             asyncio.ensure_future(feed_stdin())]
    digests = {STREAM_STDOUT: _Digest(), STREAM_STDERR: _Digest()}
    keepalive = req["keepalive"]
    deadline = started + req["timeout"] if req["timeout"] else None
    open_streams = 2
    last_sent = time.monotonic()
    timed_out = False

    async def forward(name, data):
        if data:
            digests[name].update(data)
            await sender.send(KIND_DATA, attachment=data, stream=name)

    try:
        while open_streams:
            now = time.monotonic()
            wait = keepalive - (now - last_sent)
            if become is not None and not become_done.is_set():
                wait = min(wait, become.deadline - now)
            if deadline is not None:
                wait = min(wait, deadline - now)
            try:
                name, data = await asyncio.wait_for(events.get(), max(wait, 0.01))
            except asyncio.TimeoutError:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    timed_out = True
                    break
                if become is not None and not become_done.is_set() and now >= become.deadline:
                    missing = "no success marker" if become.sent_password else "no success marker and no password prompt"
                    raise become.failure("timed out after %.0f s waiting for privilege escalation (%s)"
                                         % (req["become"]["timeout"], missing))
                if now - last_sent >= keepalive:
                    await sender.send(KIND_KEEPALIVE)
                    last_sent = now
                continue
            if not data:
                open_streams -= 1
            if become is not None and not become_done.is_set():
                if not data:
                    if open_streams == 0 or name == STREAM_STDOUT:
                        raise become.failure("privilege escalation ended before it succeeded")
                    continue
                (become.stdout if name == STREAM_STDOUT else become.stderr).extend(data)
                if become.succeeded():
                    become_done.set()
                    out, err = become.leftovers()
                    await forward(STREAM_STDOUT, out)
                    await forward(STREAM_STDERR, err)
                    last_sent = time.monotonic()
                elif become.prompted():
                    if become.sent_password:
                        raise become.failure("the become password was rejected (prompted again after it was sent)")
                    if become.password is None:
                        raise become.failure("privilege escalation asks for a password but none was given")
                    become.mark_prompt_seen()
                    proc.write_password(become.password.encode("utf-8") + b"\n")
                    become.sent_password = True
                continue
            await forward(name, data)
            if data:
                last_sent = time.monotonic()
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()

    if timed_out:
        await proc.terminate()
        details = dict(proc.details, timeout=req["timeout"], stdout=digests[STREAM_STDOUT].summary(),
                       stderr=digests[STREAM_STDERR].summary())
        raise WireError(E_TIMEOUT, "command timed out after %s s; its %s was killed" % (req["timeout"], proc.label), details)
    # pipes are closed; wait for the exit status while still sending keepalives
    while True:
        try:
            rc = await asyncio.wait_for(proc.wait(), keepalive)
            break
        except asyncio.TimeoutError:
            await sender.send(KIND_KEEPALIVE)
    result = {
        "rc": rc,
        "stdout": digests[STREAM_STDOUT].summary(),
        "stderr": digests[STREAM_STDERR].summary(),
        "duration": round(time.monotonic() - started, 6),
    }
    if rc < 0:
        result["signal"] = -rc
    await sender.send(KIND_RESULT, result)
    return result


# ---------------------------------------------------------------- put

async def receive_upload(receiver, size, keepalive, write):
    """Take exactly ``size`` bytes of data messages from an upload stream, passing each chunk to ``write``."""
    received = 0
    silence = liveness_timeout(keepalive)
    while received < size:
        try:
            msg = await receiver.get(silence)
        except asyncio.TimeoutError:
            raise WireError(E_STREAM, "upload stalled: no data for %.0f s after %d of %d bytes" % (silence, received, size))
        if msg.kind != KIND_DATA:
            raise WireError(E_STREAM, "unexpected %r message in an upload" % msg.kind)
        if received + len(msg.data) > size:
            raise WireError(E_SIZE_MISMATCH, "upload is larger than the announced %d bytes" % size)
        received += len(msg.data)
        write(msg.data)
    return received


def open_put_target(path):
    """Check the destination and open an AtomicFile beside it (before the request is accepted)."""
    parent = os.path.dirname(path) or "/"
    if not os.path.isdir(parent):
        raise WireError(E_NOT_FOUND, "destination directory %s does not exist" % parent)
    if os.path.isdir(path):
        raise WireError(E_BAD_PATH, "destination %s is a directory" % path)
    try:
        return AtomicFile(path)
    except OSError as exc:
        raise os_error(exc, "cannot create a temp file in %s" % parent)


async def run_put(req, target, inline, receiver, sender):
    """Receive req['size'] bytes (inline or as a stream) into ``target`` (from open_put_target),
    verify size and sha256, then rename into place; on any failure nothing is left behind."""
    size = req["size"]
    try:
        try:
            if receiver is None:
                target.write(inline)
            else:
                await receive_upload(receiver, size, req["keepalive"], target.write)
        except OSError as exc:
            raise os_error(exc, "cannot write %s" % target.temp)
        if target.size != size:
            raise WireError(E_SIZE_MISMATCH, "received %d bytes, %d were announced" % (target.size, size))
        summary = {"size": target.size, "sha256": target.sha256()}
        if summary["sha256"] != req["sha256"]:
            raise WireError(E_CHECKSUM_MISMATCH, "sha256 of the received bytes is %s, the caller announced %s; "
                                                 "nothing was written" % (summary["sha256"], req["sha256"]))
        try:
            target.commit(req["mode"])
        except OSError as exc:
            raise os_error(exc, "cannot move the received file to %s" % req["path"])
        await sender.send(KIND_RESULT, summary)
        return summary
    finally:
        target.discard()


# ---------------------------------------------------------------- fetch

def open_fetch_source(path):
    """Open a regular file for reading. Returns (fd, size, mode)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise os_error(exc, "cannot open %s" % path)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise WireError(E_BAD_PATH, "%s is not a regular file" % path)
    return fd, st.st_size, stat.S_IMODE(st.st_mode)


async def run_fetch(fd, sender, chunk):
    """Stream the open file, then a result with size and sha256."""
    digest = _Digest()
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                data = await loop.run_in_executor(None, os.read, fd, chunk)
            except OSError as exc:
                raise os_error(exc, "read failed")
            if not data:
                break
            digest.update(data)
            await sender.send(KIND_DATA, attachment=data, stream=STREAM_FILE)
    finally:
        os.close(fd)
    summary = digest.summary()
    await sender.send(KIND_RESULT, summary)
    return summary
