# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LocalHost: the executor's own host (agent mode). Commands start in a new session (so a timeout kills the
whole process group); files land through a temp file beside the destination and a rename."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pty
import pwd
import signal
import stat
import termios
from typing import TYPE_CHECKING, Optional, Tuple

from natsops_executor._wire.atomic import AtomicFile
from natsops_executor._wire.contract import E_BAD_PATH, E_NOT_FOUND, E_SPAWN, WireError, sha256_of
from natsops_executor._wire.messages import ExecRequest, FileState, FileSummary
from natsops_executor.guard import JobGuard
from natsops_executor.hosts.base import (
    DRAIN_AFTER_KILL, KILL_GRACE, Host, Landing, Process, SourceFile, os_error, run_blocking,
)

if TYPE_CHECKING:
    from natsops_executor.warm import WarmPool

log = logging.getLogger("natsops_executor")


def account_name() -> str:
    """The name of the account this process runs as (its uid when the account has no name)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _controlling_tty() -> None:
    # runs in the child after setsid(): make the pty on stdin the controlling terminal (su needs it)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class LocalProcess(Process):
    """A command on this host, in its own session (process group = its pid), watched by the job guard."""

    def __init__(self, proc: asyncio.subprocess.Process, primary: Optional[int], guard: Optional[JobGuard] = None) -> None:
        self.proc = proc
        self.guard = guard
        if guard is not None:
            guard.watch(proc.pid)
        self.primary = primary  # pty side for become prompts, or None
        self.stdout = proc.stdout  # type: ignore[assignment]
        self.stderr = proc.stderr  # type: ignore[assignment]
        self.label = "process group %d" % proc.pid
        self.details = {"pgid": proc.pid}

    async def wait(self) -> int:
        return await self.proc.wait()

    def write_password(self, data: bytes) -> None:
        if self.primary is not None:
            os.write(self.primary, data)
        elif self.proc.stdin is not None:
            self.proc.stdin.write(data)

    async def feed(self, data: bytes) -> None:
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

    async def terminate(self) -> None:
        _kill_group(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), KILL_GRACE)
        except asyncio.TimeoutError:
            _kill_group(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    async def cleanup(self) -> None:
        if self.proc.returncode is None:
            _kill_group(self.proc.pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(self.proc.wait(), DRAIN_AFTER_KILL)
            except asyncio.TimeoutError:
                log.warning("process group %d did not exit after SIGKILL", self.proc.pid)
        if self.primary is not None:
            os.close(self.primary)
            self.primary = None
        if self.guard is not None:
            self.guard.forget(self.proc.pid)
            self.guard = None


class LocalLanding(Landing):
    """An AtomicFile beside the destination."""

    def __init__(self, path: str) -> None:
        self.path = path
        parent = os.path.dirname(path) or "/"
        try:
            self._file = AtomicFile(path)
        except OSError as exc:
            raise os_error(exc, "cannot create a temp file in %s" % parent) from exc

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise os_error(exc, "cannot write %s" % self._file.temp) from exc

    def summary(self) -> FileSummary:
        return self._file.summary()

    async def commit(self, mode: Optional[int]) -> None:
        try:
            self._file.commit(mode)
        except OSError as exc:
            raise os_error(exc, "cannot move the received file to %s" % self.path) from exc

    async def discard(self) -> None:
        self._file.discard()


class LocalFile(SourceFile):
    """An open regular file of this host."""

    def __init__(self, fd: int, size: int, mode: int) -> None:
        self._fd: Optional[int] = fd
        self.size = size
        self.mode = mode

    async def read(self, count: int) -> bytes:
        try:
            return await run_blocking(os.read, self._fd, count)
        except OSError as exc:
            raise os_error(exc, "read failed") from exc

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_regular_file(path: str, what: str = "") -> Tuple[int, os.stat_result]:
    """Open ``path`` for reading without ever blocking (a FIFO or a device would wait for a writer, or worse) and
    return (fd, stat) when it is a regular file; WireError(bad_path) for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise os_error(exc, "cannot open %s%s" % (what, path)) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise WireError(E_BAD_PATH, "%s%s is %s" % (what, path, kind))
    os.set_blocking(fd, True)
    return fd, st


def _file_state(path: str) -> Optional[FileState]:
    """Blocking (run in a thread): (sha256, mode) of a regular file, None when absent."""
    try:
        fd, st = open_regular_file(path, "destination ")
    except WireError as exc:
        if exc.code == E_NOT_FOUND:
            return None
        raise
    try:
        with os.fdopen(fd, "rb") as handle:
            return FileState(sha256=sha256_of(handle), mode=stat.S_IMODE(st.st_mode))
    except OSError as exc:
        raise os_error(exc, "cannot read %s" % path) from exc


class LocalHost(Host):
    """The executor's own host; with a ``guard``, its commands die with the executor; with a ``warm`` pool,
    pipelined module runs it recognises fork from a warm parent (warm.py), everything else runs cold."""

    where = ""

    def __init__(self, guard: Optional[JobGuard] = None, warm: Optional["WarmPool"] = None) -> None:
        self.guard = guard
        self.warm = warm
        self.account = account_name()

    async def spawn(self, req: ExecRequest, stdin: bytes = b"") -> Process:
        if self.warm is not None:
            process = await self.warm.spawn(req, stdin)
            if process is not None:
                return process
        return await self._spawn_cold(req)

    async def _spawn_cold(self, req: ExecRequest) -> Process:
        argv = req.argv_or_shell()
        env = dict(os.environ)
        env.update(req.env or {})
        primary = secondary = None
        if req.pty:
            primary, secondary = pty.openpty()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=secondary if req.pty else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                cwd=req.cwd, env=env, start_new_session=True,
                preexec_fn=_controlling_tty if req.pty else None)
        except OSError as exc:
            if primary is not None:
                os.close(primary)
            raise WireError(E_SPAWN, "cannot start %s: %s" % (argv[0], exc.strerror or exc), {"errno": exc.errno}) from exc
        finally:
            if secondary is not None:
                os.close(secondary)
        return LocalProcess(proc, primary, self.guard)

    async def landing(self, path: str) -> Landing:
        parent = os.path.dirname(path) or "/"
        if not os.path.isdir(parent):
            raise WireError(E_NOT_FOUND, "destination directory %s does not exist" % parent)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise os_error(exc, "cannot check %s" % path) from exc
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise WireError(E_BAD_PATH, "destination %s is a directory" % path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise WireError(E_BAD_PATH, "destination %s is not a regular file" % path)
        return LocalLanding(path)

    async def open_file(self, path: str) -> SourceFile:
        fd, st = open_regular_file(path)
        return LocalFile(fd, st.st_size, stat.S_IMODE(st.st_mode))

    async def state(self, path: str) -> Optional[FileState]:
        return await run_blocking(_file_state, path)

    async def chmod(self, path: str, mode: int) -> None:
        try:
            os.chmod(path, mode)
        except OSError as exc:
            raise os_error(exc, "cannot change the mode of %s" % path) from exc
