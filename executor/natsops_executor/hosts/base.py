# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Host interface: the operations every request needs, whatever host it runs on.

The request handlers (service.py, transfer.py, bklite.py) and the host-independent job code (jobs.py) use only
these; LocalHost and SSHHost implement them. Adding a way to reach hosts means adding one class here.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import errno
import re
from typing import Any, Callable, Dict, Optional

from natsops_executor._wire.contract import E_BAD_PATH, E_IO, E_NOT_FOUND, E_PERMISSION, WireError
from natsops_executor._wire.messages import ExecRequest, FileState, FileSummary

KILL_GRACE = 1.0        # seconds between SIGTERM and SIGKILL for a timed-out process group
DRAIN_AFTER_KILL = 2.0  # seconds to wait for pipes to close once the group is dead

_ERRNO_CODES = {errno.ENOENT: E_NOT_FOUND, errno.EACCES: E_PERMISSION, errno.EPERM: E_PERMISSION,
                errno.EISDIR: E_BAD_PATH, errno.ENOTDIR: E_BAD_PATH}


# File work of this host (hashing, reading) runs in threads of its own, never in the event loop; the pool is
# bounded, so a flood of file requests waits here instead of starving everything else of threads.
_FILE_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="natsops-file")


# an environment variable a POSIX shell can export: SSH mode refuses other names (cold and warm alike)
SHELL_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


async def run_blocking(func: Callable[..., Any], *args: Any) -> Any:
    """Run blocking file work of this host in the file threads."""
    return await asyncio.get_running_loop().run_in_executor(_FILE_THREADS, func, *args)


def os_error(exc: OSError, what: str) -> WireError:
    """An OSError (local, or an SFTP error carrying an errno) as a WireError with the matching code."""
    return WireError(_ERRNO_CODES.get(exc.errno, E_IO), "%s: %s" % (what, exc.strerror or exc), {"errno": exc.errno})


class Process(abc.ABC):
    """A started command, as jobs.supervise drives it: two output readers, stdin, signals, exit status."""

    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    label: str                  # what a timeout kills, for messages: "process group 123", "remote process group ..."
    details: Dict[str, Any]     # the same as error details (pid, pgid, host)
    warm: bool = False          # forked from a warm parent (warm.py), not a new interpreter

    @abc.abstractmethod
    async def wait(self) -> int:
        """The exit status (negative: killed by that signal)."""

    @abc.abstractmethod
    def write_password(self, data: bytes) -> None:
        """Answer a privilege escalation prompt (on the pty when there is one, else on stdin)."""

    @abc.abstractmethod
    async def feed(self, data: bytes) -> None:
        """Write the command's stdin, then close it (a command that exits early is not an error)."""

    @abc.abstractmethod
    async def terminate(self) -> None:
        """Timeout: TERM the whole process group, KILL it after KILL_GRACE."""

    @abc.abstractmethod
    async def cleanup(self) -> None:
        """Always called at the end: kill what is left, release pipes, pty and channels."""


class Landing(abc.ABC):
    """A file being received: bytes are written and counted, then commit() puts it at its path at once (temp
    file + rename) or discard() leaves nothing behind. discard() after commit() does nothing."""

    path: str

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Append bytes (counted and hashed)."""

    @abc.abstractmethod
    def summary(self) -> FileSummary:
        """Size and SHA-256 of what was written so far."""

    @abc.abstractmethod
    async def commit(self, mode: Optional[int]) -> None:
        """Apply ``mode`` (exactly, when given) and rename the file into place."""

    @abc.abstractmethod
    async def discard(self) -> None:
        """Remove the temp file, unless committed."""


class SourceFile(abc.ABC):
    """A regular file opened for sending (fetch)."""

    size: int
    mode: int

    @abc.abstractmethod
    async def read(self, count: int) -> bytes:
        """Up to ``count`` bytes; b"" at the end."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the file (idempotent)."""


class Host(abc.ABC):
    """Where a request runs. Every method raises WireError for what the caller should see."""

    where: str  # " on user@host:port" for log lines, "" for the executor's own host
    account: str  # the account commands start as there (before any become)

    @abc.abstractmethod
    async def spawn(self, req: ExecRequest, stdin: bytes = b"") -> Process:
        """Start the request's command (cwd, env, pty applied); WireError(spawn_failed) when it cannot start.
        ``stdin`` is what will be fed to it (a host may look at it to choose how to run it, never change it)."""

    @abc.abstractmethod
    async def landing(self, path: str) -> Landing:
        """Check that ``path`` can receive a file (its directory exists, it is not a directory) and open a temp
        file beside it. Called before a put is accepted, so a bad destination is refused before any byte moves."""

    @abc.abstractmethod
    async def open_file(self, path: str) -> SourceFile:
        """Open the regular file at ``path`` for sending; WireError(bad_path) when it is not a regular file."""

    @abc.abstractmethod
    async def state(self, path: str) -> Optional[FileState]:
        """The SHA-256 and mode of the regular file at ``path``, or None when nothing is there."""

    @abc.abstractmethod
    async def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of ``path``."""
