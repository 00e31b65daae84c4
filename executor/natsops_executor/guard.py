# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The job guard: an executor's jobs die with it, even when it is killed with SIGKILL.

Every command an executor starts on its own host runs in a process group of its own (so a timeout can kill the
whole group). Such a group outlives a dead parent. The guard is a small process the executor starts beside it:
the executor tells it each group it starts and ends (``+PGID`` / ``-PGID`` lines on the guard's stdin), and when
that pipe closes (the executor exited, however it died) the guard kills every group still registered.

Run as ``python -m natsops_executor.guard``; standard library only.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Optional, Set

log = logging.getLogger("natsops_executor")

KILL_GRACE = 1.0  # seconds between TERM and KILL, as for a timeout


class JobGuard:
    """The executor's side: start the guard, register and unregister process groups."""

    def __init__(self) -> None:
        self._proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        try:
            self._proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [sys.executable, "-m", "natsops_executor.guard"], stdin=subprocess.PIPE, close_fds=True,
                start_new_session=True)  # its own session: a Ctrl-C or a group signal to the executor spares it
        except OSError as exc:
            log.warning("cannot start the job guard (%s): jobs will survive an executor that is killed", exc)

    def _tell(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(line.encode("ascii") + b"\n")
            self._proc.stdin.flush()
        except OSError as exc:
            log.warning("the job guard is gone (%s): jobs will survive an executor that is killed", exc)
            self._proc = None

    def watch(self, pgid: int) -> None:
        self._tell("+%d" % pgid)

    def forget(self, pgid: int) -> None:
        self._tell("-%d" % pgid)

    def stop(self) -> None:
        """A clean stop: the guard ends the groups still registered (none, normally) and exits."""
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None


def _signal(groups: Set[int], sig: int) -> Set[int]:
    """Send ``sig`` to each group; returns the groups that still exist."""
    alive = set()
    for pgid in sorted(groups):
        try:
            os.killpg(pgid, sig)
            alive.add(pgid)
        except (ProcessLookupError, PermissionError):
            pass
    return alive


def _kill(groups: Set[int]) -> None:
    """TERM every group, KILL what is left after a short grace."""
    alive = _signal(groups, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = _signal(alive, 0)
    _signal(alive, signal.SIGKILL)


def main() -> int:
    """The guard process: read +PGID / -PGID lines until the executor's end of the pipe closes."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups: Set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        try:
            pgid = int(line[1:])
        except ValueError:
            continue
        if line.startswith(b"+") and pgid > 1:
            groups.add(pgid)
        elif line.startswith(b"-"):
            groups.discard(pgid)
    _kill(groups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
