# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""CPU-seconds per group of processes, for the bench scripts.

With cgroup v2 (the ``cgroup2`` mount: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid machine) each group
is a cgroup under a bench-owned parent, ``natsops-bench-<pid>``: long-lived processes are moved in by PID
(``adopt``), commands start inside (``argv``), and every process they start, detached or not, stays there.
``cpu.stat`` ``usage_usec`` counts every process that ever ran in the group, live or gone. Cgroups made by
others (a lab host's) can be read too (``watch``). ``close`` moves whatever is left back to this process's own
cgroup and removes the groups it made.

Without a usable cgroup v2, groups fall back to /proc: utime + stime + cutime + cstime of the adopted PIDs (their
reaped children included) and, for commands, this process's reaped children (``RUSAGE_CHILDREN``): a process
that detaches from its parent (the natsops control process, ssh's ControlPersist master) is then not counted.
"""

from __future__ import annotations

import contextlib
import os
import resource
from typing import Dict, Iterable, List, Optional

_TICK = os.sysconf("SC_CLK_TCK")
# Fixed text: the shell writes its own PID into the cgroup named by $0, then becomes the command.
_ENTER = 'echo $$ > "$0" && exec "$@"'


def cgroup2_mount() -> Optional[str]:
    """Where cgroup v2 is mounted, or None."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return fields[1]
    return None


def cgroup_usage(path: str) -> float:
    """CPU-seconds used so far in a cgroup v2 and its descendants."""
    with open(os.path.join(path, "cpu.stat"), encoding="ascii") as handle:
        for line in handle:
            key, value = line.split()
            if key == "usage_usec":
                return int(value) / 1e6
    raise OSError("no usage_usec in %s/cpu.stat" % path)


def proc_usage(pid: int) -> float:
    """utime + stime + cutime + cstime of a live process, in seconds (0 once it is gone)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / _TICK


def _children_usage() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Named groups of processes and the CPU-seconds each has used (``snapshot``)."""

    def __init__(self, prefer_cgroups: bool = True) -> None:
        self.parent: Optional[str] = None
        self.reason = ""
        self._mine: Dict[str, str] = {}  # group -> cgroup made here
        self._watched: Dict[str, List[str]] = {}  # group -> cgroups made by others (summed)
        self._minus: Dict[str, List[str]] = {}  # group -> cgroups inside those, not counted
        self._pids: Dict[str, List[int]] = {}  # /proc fallback: group -> adopted PIDs
        self._commands: List[str] = []  # /proc fallback: groups whose commands count as this process's children
        self._home = ""
        if prefer_cgroups:
            self._make_parent()
        else:
            self.reason = "cgroups not asked for"

    @property
    def cgroups(self) -> bool:
        return self.parent is not None

    def describe(self) -> str:
        if self.cgroups:
            return "cgroup v2 (%s): cpu.stat usage_usec of one cgroup per group, every process in it counted" % self.parent
        return ("/proc fallback (%s): utime+stime+cutime+cstime of the long-lived processes and the reaped children of "
                "each ansible-playbook; processes that detach (the control process, ssh masters) are not counted" % self.reason)

    def _make_parent(self) -> None:
        mount = cgroup2_mount()
        if mount is None:
            self.reason = "no cgroup2 mount"
            return
        with open("/proc/self/cgroup", encoding="ascii") as handle:
            own = [line.strip().split(":", 2)[2] for line in handle if line.startswith("0::")]
        self._home = os.path.join(mount, own[0].lstrip("/")) if own else mount
        parent = os.path.join(mount, "natsops-bench-%d" % os.getpid())
        try:
            os.mkdir(parent)
            cgroup_usage(parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rmdir(parent)
            self.reason = "cannot use cgroup v2 at %s: %s" % (mount, exc)
            return
        self.parent = parent

    def group(self, name: str) -> None:
        """Make a group (idempotent)."""
        if name in self._mine or name in self._pids:
            return
        if self.cgroups:
            path = os.path.join(self.parent or "", name)
            os.makedirs(path, exist_ok=True)
            self._mine[name] = path
        else:
            self._pids[name] = []

    def adopt(self, name: str, pid: int) -> None:
        """Count a running process (and whatever it starts from now on) in group NAME."""
        self.group(name)
        if self.cgroups:
            with open(os.path.join(self._mine[name], "cgroup.procs"), "w", encoding="ascii") as handle:
                handle.write("%d\n" % pid)
        else:
            self._pids[name].append(pid)

    def argv(self, name: str, argv: List[str]) -> List[str]:
        """ARGV wrapped so that the command runs in group NAME (unchanged in the /proc fallback)."""
        self.group(name)
        if self.cgroups:
            return ["/bin/sh", "-c", _ENTER, os.path.join(self._mine[name], "cgroup.procs")] + list(argv)
        if name not in self._commands:
            self._commands.append(name)
        return list(argv)

    def watch(self, name: str, paths: Iterable[str], minus: Iterable[str] = ()) -> None:
        """Group NAME reads cgroups made by others (their sum, less MINUS, which lie inside them)."""
        self._watched[name] = [p for p in paths if os.path.exists(os.path.join(p, "cpu.stat"))]
        self._minus[name] = list(minus)

    def pids(self, name: str) -> List[int]:
        """The processes in a group now (cgroups only)."""
        if name not in self._mine:
            return []
        with open(os.path.join(self._mine[name], "cgroup.procs"), encoding="ascii") as handle:
            return [int(line) for line in handle.read().split()]

    def snapshot(self) -> Dict[str, float]:
        """CPU-seconds used so far, per group."""
        figures = {name: cgroup_usage(path) for name, path in self._mine.items()}
        figures.update({name: sum(proc_usage(pid) for pid in pids) for name, pids in self._pids.items()})
        for name in self._commands:
            figures[name] = _children_usage()
        for name, paths in self._watched.items():
            if paths:
                figures[name] = sum(cgroup_usage(p) for p in paths) - sum(_usage_or_zero(p) for p in self._minus[name])
        return figures

    def close(self) -> None:
        """Move what is left in our cgroups back to this process's cgroup and remove them."""
        if not self.cgroups:
            return
        home = os.path.join(self._home, "cgroup.procs")
        for name in list(self._mine):
            for pid in self.pids(name):
                with contextlib.suppress(OSError), open(home, "w", encoding="ascii") as handle:
                    handle.write("%d\n" % pid)
            with contextlib.suppress(OSError):
                os.rmdir(self._mine.pop(name))
        with contextlib.suppress(OSError):
            os.rmdir(self.parent or "")
        if os.path.isdir(self.parent or ""):
            raise RuntimeError("could not remove the bench cgroup %s" % self.parent)
        self.parent = None


def _usage_or_zero(path: str) -> float:
    """A cgroup that may be gone (a transient unit that stopped) counts 0."""
    try:
        return cgroup_usage(path)
    except OSError:
        return 0.0
