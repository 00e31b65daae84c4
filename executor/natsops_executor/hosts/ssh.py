# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SSHHost: a target host a zone executor reaches over its pooled SSH connection (sshpool.py).

Commands run in an SSH session (stdin, separate stdout/stderr, exit status, become prompts, timeouts that kill
the remote process group); files go over SFTP: a temp file beside the destination, then a rename, so nothing is
ever half-written. This file answers "where does a file land on an SSH target?": ``SSHLanding``.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import posixpath
import shlex
import stat
import tempfile
import threading
import time
from typing import Any, BinaryIO, Callable, Optional, Tuple

import paramiko

from natsops_executor._wire.contract import (
    E_BAD_PATH, E_BAD_REQUEST, E_IO, E_NOT_FOUND, E_SPAWN, E_TIMEOUT, WireError, sha256_of,
)
from natsops_executor._wire.messages import Digest, ExecRequest, FileState, FileSummary, Target
from natsops_executor.hosts.base import KILL_GRACE, SHELL_ENV_NAME, Host, Landing, Process, SourceFile, os_error
from natsops_executor.sshpool import SSHPool
from natsops_executor.warm import WarmPool
from natsops_executor.warm_remote import Channel, RemoteSite

log = logging.getLogger("natsops_executor")

# First bytes of stderr (stdout with a pty): the remote shell's pid and process group, so that a
# timeout can kill the whole group, like agent mode does. /proc is Linux; elsewhere only the pid.
_MARKER = b"\x1enatsops-pid:"
_WRAPPER = ('read -r natsops_p natsops_c natsops_s natsops_pp natsops_g natsops_r < /proc/$$/stat 2>/dev/null; '
            'printf "\\036natsops-pid:%s:%s\\n" "$$" "${natsops_g:-}" >&2; exec /bin/sh -c "$1"')
_BLOCK = 1 << 20


# ---------------------------------------------------------------- exec

def remote_command(req: ExecRequest) -> str:
    """The command line for the remote login shell: cwd and env applied, wrapped to report its pid."""
    if req.argv:
        command = " ".join(shlex.quote(a) for a in req.argv)
    elif req.shell in (None, "/bin/sh", "sh"):
        command = req.command or ""
    else:
        command = "%s -c %s" % (shlex.quote(req.shell), shlex.quote(req.command or ""))
    prefix = []
    if req.cwd:
        prefix.append("cd %s" % shlex.quote(req.cwd))
    for name, value in sorted((req.env or {}).items()):
        if not SHELL_ENV_NAME.match(name):
            raise WireError(E_BAD_REQUEST, "exec: environment variable name %r is not valid in SSH mode" % name)
        prefix.append("export %s=%s" % (name, shlex.quote(value)))
    if prefix:
        command = " && ".join(prefix) + " && " + command
    return "/bin/sh -c %s natsops-exec %s" % (shlex.quote(_WRAPPER), shlex.quote(command))


class RemoteProcess(Process):
    """A command in an SSH session of a pooled connection (``lease``, given back at cleanup); two reader
    threads feed its output into the event loop."""

    def __init__(self, pool: SSHPool, lease: Tuple[Any, Any], target: Target, chan: paramiko.Channel,
                 use_pty: bool) -> None:
        self.pool = pool
        self.lease: Optional[Tuple[Any, Any]] = lease
        self.target = target
        self.chan = chan
        self.loop = asyncio.get_running_loop()
        self.stdout = asyncio.StreamReader(limit=1 << 24, loop=self.loop)
        self.stderr = asyncio.StreamReader(limit=1 << 24, loop=self.loop)
        self.remote_pid: Optional[int] = None
        self.remote_pgid: Optional[int] = None
        self.label = "remote command on %s" % target.host
        self.details = {"host": target.host}
        self._exit: asyncio.Future = self.loop.create_future()
        self._marker_on_stdout = use_pty
        for func in (self._read_stdout, self._read_stderr):
            threading.Thread(target=func, daemon=True, name="natsops-ssh-reader").start()

    def _deliver(self, reader: asyncio.StreamReader, data: bytes) -> None:
        self.loop.call_soon_threadsafe(reader.feed_data, data)

    def _pump(self, recv: Callable[[int], bytes], reader: asyncio.StreamReader, has_marker: bool) -> None:
        pending = b""
        try:
            while True:
                data = recv(65536)
                if not data:
                    break
                if has_marker:
                    pending += data
                    if b"\n" not in pending and len(pending) < 256:
                        continue
                    data = self._strip_marker(pending)
                    has_marker = False
                if data:
                    self._deliver(reader, data)
            if has_marker and pending:
                self._deliver(reader, self._strip_marker(pending))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.info("ssh: reading from %s ended: %s", self.target.host, exc)
        finally:
            self.loop.call_soon_threadsafe(reader.feed_eof)

    def _strip_marker(self, data: bytes) -> bytes:
        if not data.startswith(_MARKER):
            return data
        line, _sep, rest = data.partition(b"\n")
        fields = line[len(_MARKER):].rstrip(b"\r").split(b":")
        try:
            self.remote_pid = int(fields[0])
            self.remote_pgid = int(fields[1]) if len(fields) > 1 and fields[1] else None
            self.label = "remote process group %s on %s" % (self.remote_pgid or self.remote_pid, self.target.host)
            self.details = {"host": self.target.host, "pid": self.remote_pid, "pgid": self.remote_pgid}
        except ValueError:
            pass
        return rest

    def _read_stdout(self) -> None:
        self._pump(self.chan.recv, self.stdout, self._marker_on_stdout)
        status = self.chan.recv_exit_status()
        self.loop.call_soon_threadsafe(self._set_exit, status)

    def _read_stderr(self) -> None:
        self._pump(self.chan.recv_stderr, self.stderr, not self._marker_on_stdout)

    def _set_exit(self, status: int) -> None:
        if not self._exit.done():
            self._exit.set_result(status)

    async def wait(self) -> int:
        status = await asyncio.shield(self._exit)
        return 255 if status < 0 else status  # no exit status (killed by a signal, channel lost): ssh's 255

    def write_password(self, data: bytes) -> None:
        self.chan.sendall(data)

    def _send_all(self, data: bytes) -> None:
        try:
            if data:
                self.chan.sendall(data)
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the command exited without reading all of stdin

    async def feed(self, data: bytes) -> None:
        await self.pool.run(self._send_all, data)

    async def _signal(self, name: str) -> None:
        if self.remote_pid is None:
            return
        if self.remote_pgid:
            command = "kill -%s -- -%d 2>/dev/null || kill -%s %d" % (name, self.remote_pgid, name, self.remote_pid)
        else:
            command = "kill -%s %d" % (name, self.remote_pid)
        try:
            key, entry, chan = await self.pool.session(self.target)
        except WireError as exc:
            log.warning("ssh: cannot signal %s: %s", self.label, exc.message)
            return
        try:
            await self.pool.run(_run_quiet, chan, command)
        finally:
            self.pool.release(key, entry)

    async def terminate(self) -> None:
        await self._signal("TERM")
        try:
            await asyncio.wait_for(asyncio.shield(self._exit), KILL_GRACE)
        except asyncio.TimeoutError:
            await self._signal("KILL")
        self.chan.close()

    async def cleanup(self) -> None:
        try:
            if not self._exit.done():
                await self._signal("KILL")
            self.chan.close()
        finally:
            if self.lease is not None:
                self.pool.release(*self.lease)
                self.lease = None


def _run_quiet(chan: paramiko.Channel, command: str) -> None:
    try:
        chan.exec_command(command)
        chan.recv_exit_status()
    finally:
        chan.close()


# ---------------------------------------------------------------- SFTP (blocking; run in the pool's threads)

def _sftp_error(exc: IOError, what: str) -> WireError:
    if getattr(exc, "errno", None):
        return os_error(exc, what)
    return WireError(E_IO, "%s: %s" % (what, exc), {"stage": "sftp"})


def _missing(exc: IOError) -> bool:
    return getattr(exc, "errno", None) == errno.ENOENT


def _check_destination(sftp: paramiko.SFTPClient, path: str) -> None:
    """The directory of ``path`` exists and ``path`` is not a directory."""
    parent = posixpath.dirname(path) or "/"
    try:
        if not stat.S_ISDIR(sftp.stat(parent).st_mode):
            raise WireError(E_NOT_FOUND, "destination directory %s does not exist" % parent)
    except IOError as exc:
        if _missing(exc):
            raise WireError(E_NOT_FOUND, "destination directory %s does not exist" % parent) from None
        raise _sftp_error(exc, "cannot check %s" % parent) from exc
    try:
        mode = sftp.stat(path).st_mode
    except IOError as exc:
        if not _missing(exc):
            raise _sftp_error(exc, "cannot check %s" % path) from exc
        return
    if stat.S_ISDIR(mode):
        raise WireError(E_BAD_PATH, "destination %s is a directory" % path)
    if not stat.S_ISREG(mode):
        raise WireError(E_BAD_PATH, "destination %s is not a regular file" % path)


def _upload(sftp: paramiko.SFTPClient, spool: BinaryIO, path: str, mode: Optional[int],
            deadline: Optional[float] = None) -> None:
    """Write a temp file beside ``path``, then rename it over ``path``; the temp file never survives a failure."""
    name = ".%s.natsops-%s.tmp" % (posixpath.basename(path)[:64], os.urandom(4).hex())
    temp: Optional[str] = posixpath.join(posixpath.dirname(path) or "/", name)
    try:
        with sftp.open(temp, "wx") as handle:
            handle.chmod(0o600 if mode is None else mode)
            handle.set_pipelined(True)
            spool.seek(0)
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    raise WireError(E_TIMEOUT, "copy to %s timed out; nothing was written" % path)
                block = spool.read(_BLOCK)
                if not block:
                    break
                handle.write(block)
        sftp.posix_rename(temp, path)
        temp = None
    except IOError as exc:
        raise _sftp_error(exc, "cannot write %s" % path) from exc
    finally:
        if temp is not None:
            try:
                sftp.remove(temp)
            except IOError:
                pass


def _remote_isdir(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode)
    except IOError as exc:
        if _missing(exc):
            return False
        raise


def _copy_tree(sftp: paramiko.SFTPClient, source: str, dest: str, deadline: float) -> Tuple[int, int, str]:
    """Copy a file or directory of this host to ``dest`` on the target with scp -r's rules (an existing
    directory at ``dest`` receives ``basename(source)``); every file lands atomically.
    Returns (files, bytes, the path it landed at)."""
    if _remote_isdir(sftp, dest):
        dest = posixpath.join(dest, os.path.basename(source.rstrip("/")) or "root")
    files = size = 0
    if not os.path.isdir(source):
        with open(source, "rb") as handle:
            _upload(sftp, handle, dest, stat.S_IMODE(os.fstat(handle.fileno()).st_mode), deadline)
            return 1, os.fstat(handle.fileno()).st_size, dest
    for root, _dirs, names in os.walk(source):
        rel = os.path.relpath(root, source)
        rdir = dest if rel == "." else posixpath.join(dest, *rel.split(os.sep))
        if not _remote_isdir(sftp, rdir):
            sftp.mkdir(rdir, stat.S_IMODE(os.stat(root).st_mode))
        for name in sorted(names):
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                continue  # sockets, fifos, dangling links: scp skips them too
            with open(path, "rb") as handle:
                st = os.fstat(handle.fileno())
                _upload(sftp, handle, posixpath.join(rdir, name), stat.S_IMODE(st.st_mode), deadline)
            files += 1
            size += st.st_size
    return files, size, dest


def _open_remote(sftp: paramiko.SFTPClient, path: str) -> Tuple[paramiko.SFTPFile, int, int]:
    try:
        st = sftp.stat(path)
    except IOError as exc:
        raise _sftp_error(exc, "cannot open %s" % path) from exc
    if not stat.S_ISREG(st.st_mode):
        raise WireError(E_BAD_PATH, "%s is not a regular file" % path)
    try:
        handle = sftp.open(path, "rb")
    except IOError as exc:
        raise _sftp_error(exc, "cannot open %s" % path) from exc
    handle.prefetch(st.st_size)
    return handle, st.st_size, stat.S_IMODE(st.st_mode)


def _remote_state(sftp: paramiko.SFTPClient, path: str) -> Optional[FileState]:
    try:
        st = sftp.stat(path)
    except IOError as exc:
        if _missing(exc):
            return None
        raise WireError(E_IO, "cannot check %s: %s" % (path, exc)) from exc
    if stat.S_ISDIR(st.st_mode):
        raise WireError(E_BAD_PATH, "destination %s is a directory" % path)
    if not stat.S_ISREG(st.st_mode):
        raise WireError(E_BAD_PATH, "destination %s is not a regular file" % path)
    with sftp.open(path, "rb") as handle:
        handle.prefetch(st.st_size)
        return FileState(sha256=sha256_of(handle), mode=stat.S_IMODE(st.st_mode))


# ---------------------------------------------------------------- files

class SSHLanding(Landing):
    """Where a file lands on an SSH target: the bytes are spooled and verified on the executor first, then
    written over SFTP to a temp file beside the destination and renamed over it."""

    def __init__(self, host: "SSHHost", path: str) -> None:
        self.host = host
        self.path = path
        self._spool: Optional[BinaryIO] = tempfile.TemporaryFile(prefix="natsops-put-")  # pylint: disable=consider-using-with
        self._digest = Digest()

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._spool.write(data)  # type: ignore[union-attr]

    def summary(self) -> FileSummary:
        return self._digest.summary()

    async def commit(self, mode: Optional[int]) -> None:
        await self.host.sftp_call(_upload, self._spool, self.path, mode)

    async def discard(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


class RemoteFile(SourceFile):
    """A regular file of the target, open over SFTP (read ahead), holding a pooled connection until closed."""

    def __init__(self, pool: SSHPool, key: Any, entry: Any, sftp: paramiko.SFTPClient,
                 opened: Tuple[paramiko.SFTPFile, int, int]) -> None:
        self.pool = pool
        self._key, self._entry, self._sftp = key, entry, sftp
        self._handle: Optional[paramiko.SFTPFile] = opened[0]
        self.size, self.mode = opened[1], opened[2]

    async def read(self, count: int) -> bytes:
        try:
            return await self.pool.run(self._handle.read, count)  # type: ignore[union-attr]
        except IOError as exc:
            raise _sftp_error(exc, "read failed") from exc

    async def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
            self.pool.release(self._key, self._entry)


async def _start(pool: SSHPool, target: Target, command: str, what: str,
                 use_pty: bool = False) -> Tuple[Any, Any, paramiko.Channel]:
    """(key, entry, channel): ``command`` started in a new session of the target's pooled connection (release the
    lease when done); E_SPAWN if the session refuses it."""
    key, entry, chan = await pool.session(target)
    try:
        if use_pty:
            await pool.run(chan.get_pty)
        await pool.run(chan.exec_command, command)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        chan.close()
        pool.release(key, entry)
        raise WireError(E_SPAWN, "cannot start %s on %s: %s" % (what, target.host, exc), {"stage": "session"}) from exc
    return key, entry, chan


class _SSHChannel(Channel):
    """A session of a pooled connection that holds its lease until closed."""

    def __init__(self, pool: SSHPool, lease: Tuple[Any, Any], chan: paramiko.Channel) -> None:
        self.pool = pool
        self.lease: Optional[Tuple[Any, Any]] = lease
        self.chan = chan
        self.loop = asyncio.get_running_loop()

    def sendall(self, data: bytes) -> None:
        try:
            self.chan.sendall(data)
        except (paramiko.SSHException, EOFError) as exc:
            raise OSError("the SSH session ended: %s" % exc) from exc

    def recv(self, size: int) -> bytes:
        return self.chan.recv(size)

    def recv_stderr(self, size: int) -> bytes:
        return self.chan.recv_stderr(size)

    def close(self) -> None:
        try:
            self.chan.close()
        finally:
            lease, self.lease = self.lease, None
            if lease is not None:
                self.loop.call_soon_threadsafe(self.pool.release, *lease)


class SSHSite(RemoteSite):
    """A target as warm runs see it: runners are kept per connection of the pool (host, port, user, credentials),
    so a request runs warm only on a runner its own credentials would have logged in to."""

    def __init__(self, pool: SSHPool, target: Target) -> None:
        self.pool = pool
        self.target = target
        self.where = json.dumps(list(pool.key_for(target)))
        self.label = target.where()

    async def open(self, command: str) -> Channel:
        key, entry, chan = await _start(self.pool, self.target, command, "a warm runner")
        return _SSHChannel(self.pool, (key, entry), chan)

    async def call(self, func: Callable[..., Any], *args: Any) -> Any:
        return await self.pool.run(func, *args)

    async def run_quietly(self, command: str) -> None:
        try:
            key, entry, chan = await self.pool.session(self.target)
        except WireError as exc:
            log.warning("ssh: cannot run %r on %s: %s", command, self.label, exc.message)
            return
        try:
            await self.pool.run(_run_quiet, chan, command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            log.warning("ssh: cannot run %r on %s: %s", command, self.label, exc)
        finally:
            self.pool.release(key, entry)


class SSHHost(Host):
    """A target host reached through the pool with the request's target (host, port, user, credentials); with a
    ``warm`` pool, pipelined module runs it recognises run on a warm runner on the target (warm_remote.py)."""

    def __init__(self, pool: SSHPool, target: Target, warm: Optional[WarmPool] = None) -> None:
        self.pool = pool
        self.target = target
        self.warm = warm
        self.where = " on %s" % target.where()
        self.account = target.user

    async def sftp_call(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(sftp, *args)`` in a pool thread, on an SFTP session of the target opened for the call."""
        async with self.pool.sftp_client(self.target) as sftp:
            return await self.pool.run(func, sftp, *args)

    async def spawn(self, req: ExecRequest, stdin: bytes = b"") -> Process:
        if self.warm is not None:
            process = await self.warm.spawn(req, stdin, SSHSite(self.pool, self.target))
            if process is not None:
                return process
        key, entry, chan = await _start(self.pool, self.target, remote_command(req), "the command", req.pty)
        return RemoteProcess(self.pool, (key, entry), self.target, chan, req.pty)

    async def landing(self, path: str) -> Landing:
        await self.sftp_call(_check_destination, path)
        return SSHLanding(self, path)

    async def open_file(self, path: str) -> SourceFile:
        key, entry, sftp = await self.pool.sftp(self.target)
        try:
            opened = await self.pool.run(_open_remote, sftp, path)
        except BaseException:
            sftp.close()
            self.pool.release(key, entry)
            raise
        return RemoteFile(self.pool, key, entry, sftp, opened)

    async def state(self, path: str) -> Optional[FileState]:
        return await self.sftp_call(_remote_state, path)

    async def chmod(self, path: str, mode: int) -> None:
        try:
            await self.sftp_call(lambda sftp: sftp.chmod(path, mode))
        except IOError as exc:
            raise _sftp_error(exc, "cannot change the mode of %s" % path) from exc

    async def copy_in(self, source: str, dest: str, deadline: float) -> Tuple[int, int, str]:
        """Copy ``source`` (a file or directory on the executor host) to ``dest`` on the target over SFTP, like
        ``scp -r`` but with host keys checked and every file written to a temp file and renamed."""
        try:
            return await self.sftp_call(_copy_tree, source, dest, deadline)
        except (IOError, OSError) as exc:
            raise _sftp_error(exc, "cannot copy %s to %s:%s" % (source, self.target.host, dest)) from exc
