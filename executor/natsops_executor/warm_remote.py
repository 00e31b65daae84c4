# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Warm module runs on targets reached over SSH (zone mode): one warm runner per target, interpreter and
environment, started once through the executor's pooled SSH connection and kept there.

The runner is the warm parent program (``_warm_parent.py``) in stream mode: its stdin and stdout are one SSH
channel carrying frames (run this module source, signal that job; the job's pid, its output, its status), so a
module run needs no new SSH session and no new interpreter on the target. Recognition is warm.py's
(``recognise_remote``), the pool is warm.py's ``WarmPool``; this module adds the site (``RemoteSite``: how to
open a channel to the target, implemented by hosts/ssh.py), the executor's end of the runner (``RemoteParent``)
and the run it forks (``RemoteWarmProcess``). A runner whose channel ends loses its running jobs (``interrupted``,
their process groups are killed through a separate session) and later runs go cold until a new one is ready.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import shlex
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from natsops_executor._wire.contract import E_INTERRUPTED, WireError
from natsops_executor.warm import (
    _FRAME, BOOT, FORK_TIMEOUT, IDLE_TIMEOUT, START_TIMEOUT, Recognised, WarmProcess, _ForkRefused, _Parent,
    _ParentGone, _to_completion, _zip_bytes, parent_program,
)

log = logging.getLogger("natsops_executor")

# the runner's first bytes on its stdout (_warm_parent.SYNC; that program imports nothing of this package)
SYNC = b"\x00natsops-warm-runner\x00"
# a runner exits on its own after this long without a frame and without running children (its executor vanished
# without closing the channel); longer than the pool keeps an idle runner, so it never races the pool's own stop
RUNNER_IDLE_EXIT = IDLE_TIMEOUT * 3


class Channel(abc.ABC):
    """A started command on the target with its stdin, stdout and stderr (an SSH session; a pipe in tests).
    Blocking calls: the executor makes them in threads."""

    @abc.abstractmethod
    def sendall(self, data: bytes) -> None:
        """Write all of ``data`` to the command's stdin."""

    @abc.abstractmethod
    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of its stdout; b"" at the end."""

    @abc.abstractmethod
    def recv_stderr(self, size: int) -> bytes:
        """Up to ``size`` bytes of its stderr; b"" at the end."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the session (the command sees the end of its stdin)."""


class RemoteSite(abc.ABC):
    """A target as warm runs see it: ``where`` names it (user@host:port, part of every key), ``open`` starts a
    command there, ``run_quietly`` runs one to its end (used to kill a lost runner's children)."""

    where: str   # what runners on it are keyed by (never logged: it may name credentials by a digest)
    label: str   # how logs name it (user@host:port)

    @abc.abstractmethod
    async def open(self, command: str) -> Channel:
        """Start ``command`` (a POSIX shell command line) on the target."""

    @abc.abstractmethod
    async def run_quietly(self, command: str) -> None:
        """Run ``command`` on the target and wait for its end, ignoring its output and failures."""

    @abc.abstractmethod
    async def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call of a channel (send, close) in threads of the site's own (never the file threads:
        a stalled link must not hold up the executor's other work)."""

    def parent(self, key: str, recognised: Recognised) -> "RemoteParent":
        return RemoteParent(self, key, recognised)


def runner_command(interpreter: str, env: Dict[str, str], program_size: int) -> str:
    """The command line that starts a runner on the target: the request's environment exported, then the
    interpreter with the boot line, which reads ``program_size`` bytes of the program from stdin."""
    exports = ["export %s=%s" % (name, shlex.quote(value)) for name, value in sorted(env.items())]
    start = "exec %s -c %s %d stream %d" % (shlex.quote(interpreter), shlex.quote(BOOT), program_size, RUNNER_IDLE_EXIT)
    return "/bin/sh -c %s" % shlex.quote(" && ".join(exports + [start]))


def _kill_command(pgid: int, sig: int) -> str:
    """Signal a process group from any POSIX shell (dash's kill refuses ``--``)."""
    return "kill -%s -%d 2>/dev/null" % (signal.Signals(sig).name[3:], pgid)


class RemoteParent(_Parent):
    """The executor's end of a runner on a target: frames over the channel; reader threads turn them into events."""

    def __init__(self, site: RemoteSite, key: str, recognised: Recognised) -> None:
        super().__init__(key, recognised, None)
        self.site = site
        self.place = site.where
        self.channel: Optional[Channel] = None
        self.outputs: Dict[int, Tuple[asyncio.StreamReader, asyncio.StreamReader]] = {}
        self.readers: List[threading.Thread] = []
        self.kills: Set["asyncio.Future[None]"] = set()
        self.loop = asyncio.get_running_loop()
        self.label = "warm runner on %s" % site.label

    async def start(self, zip_data: str) -> None:
        try:
            await asyncio.wait_for(self._start(zip_data), START_TIMEOUT)  # a stalled session or link included
        except (OSError, ValueError, asyncio.TimeoutError, _ParentGone, WireError) as exc:
            log.warning("%s for %s could not start: %s", self.label, self.interpreter,
                        getattr(exc, "message", None) or exc or type(exc).__name__)
            if not self.ready.done():
                self.ready.set_exception(_ParentGone(str(exc)))
            await self.stop()
        except asyncio.CancelledError:
            if not self.ready.done():
                self.ready.set_exception(_ParentGone("the executor stopped while the runner started"))
            await self.stop()
            raise

    async def _start(self, zip_data: str) -> None:
        raw = _zip_bytes(zip_data)
        if raw is None:
            raise _ParentGone("the payload zip is not base64")
        program = parent_program()
        self.channel = await self.site.open(runner_command(self.interpreter, self.env, len(program)))
        for func, name in ((self._read_frames, "frames"), (self._read_stderr, "stderr")):
            thread = threading.Thread(target=func, args=(self.channel,), daemon=True, name="natsops-warm-%s" % name)
            thread.start()
            self.readers.append(thread)
        await self._write(program)
        await self._send({"op": "init"}, raw, [])
        self._warmed(zip_data, await asyncio.shield(self.reported), self.label)

    async def run(self, recognised: Recognised) -> WarmProcess:
        """Ask the runner to fork a child for this module; returns once it runs (its pid known). Raises
        _ParentGone when nothing ran (the run goes cold): the frame could not be sent, or the runner said it did
        not start it. Once the frame went out, losing the runner is ``interrupted``: over SSH the runner's report
        of the pid may have been lost with the connection after it started the module."""
        self.next_job += 1
        job = self.next_job
        started: "asyncio.Future[int]" = self.loop.create_future()
        self.pending[job] = started
        readers = (asyncio.StreamReader(limit=1 << 24), asyncio.StreamReader(limit=1 << 24))
        self.outputs[job] = readers
        self.forks += 1
        self.last_used = time.monotonic()
        try:
            await self._send({"op": "run", "job": job, "cwd": recognised.cwd or None, "pwd": recognised.pwd or None,
                              "umask": None, "zip": recognised.zip_token}, recognised.source, [])
        except BaseException as exc:
            self._abandon(job)
            self.outputs.pop(job, None)
            if isinstance(exc, OSError):
                raise _ParentGone("cannot reach the warm runner: %s" % exc) from exc
            raise  # cancelled: if the frame went out, the pid that comes back is killed (_dispatch)
        try:
            pid = await asyncio.wait_for(started, FORK_TIMEOUT)
        except (_ForkRefused, asyncio.CancelledError):
            self._abandon(job)
            self.outputs.pop(job, None)
            raise
        except (_ParentGone, asyncio.TimeoutError) as exc:
            self._abandon(job)
            self.outputs.pop(job, None)
            self.alive = False  # retired by the pool
            why = "was lost" if isinstance(exc, _ParentGone) else "did not report it within %.0f s" % FORK_TIMEOUT
            raise WireError(E_INTERRUPTED, "the warm runner on %s %s while it started the module; the module may "
                                           "have started and its outcome is unknown" % (self.site.label, why),
                            {"warm": True, "host": self.site.label}) from exc
        process = RemoteWarmProcess(self, job, pid, readers)
        self.running[job] = process
        if job in self.exits:
            process.exited(self.exits.pop(job))
        elif not self.alive:
            process.lost()
        return process

    # ------------------------------------------------------------ the channel

    async def _write(self, data: bytes) -> None:
        channel = self.channel
        if channel is None or not self.alive:
            raise OSError("the warm runner is gone")
        async with self.send_lock:
            await _to_completion(asyncio.ensure_future(self.site.call(channel.sendall, data)))

    async def _send(self, header: Dict[str, Any], body: bytes, fds: List[int]) -> None:
        head = json.dumps(header).encode("utf-8")
        await self._write(_FRAME.pack(len(head), len(body)) + head + body)

    def _read_frames(self, channel: Channel) -> None:
        """Reader thread: frames from the runner's stdout, handed to the event loop in order. Whatever a login
        script printed comes before the runner's SYNC mark and is skipped."""
        buffer = b""
        synced = False
        try:
            while True:
                data = channel.recv(1 << 16)
                if not data:
                    break
                buffer += data
                if not synced:
                    mark = buffer.find(SYNC)
                    if mark < 0:
                        buffer = buffer[-len(SYNC):]
                        continue
                    if mark:
                        log.info("%s: skipped %d bytes its login printed", self.label, mark)
                    buffer, synced = buffer[mark + len(SYNC):], True
                while len(buffer) >= _FRAME.size:
                    hlen, blen = _FRAME.unpack_from(buffer)
                    end = _FRAME.size + hlen + blen
                    if len(buffer) < end:
                        break
                    header = json.loads(buffer[_FRAME.size:_FRAME.size + hlen].decode("utf-8"))
                    self.loop.call_soon_threadsafe(self._frame, header, buffer[_FRAME.size + hlen:end])
                    buffer = buffer[end:]
        except Exception as exc:  # pylint: disable=broad-except
            log.info("%s: reading ended: %r", self.label, exc)  # paramiko raises its own exceptions too
        finally:
            self.loop.call_soon_threadsafe(self._lost)

    def _read_stderr(self, channel: Channel) -> None:
        pending = b""
        try:
            while True:
                data = channel.recv_stderr(1 << 14)
                if not data:
                    break
                pending = (pending + data)[-(1 << 16):]
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    log.warning("%s: %s", self.label, line.decode("utf-8", "replace").rstrip())
        except Exception:  # pylint: disable=broad-except
            pass  # the frame reader reports the end of the channel

    def _frame(self, header: Dict[str, Any], body: bytes) -> None:
        job = header.get("job")
        if "out" in header:
            readers = self.outputs.get(job)  # type: ignore[arg-type]
            if readers is not None and body:  # output of a run given up on is dropped
                readers[0 if header["out"] == "stdout" else 1].feed_data(body)
            return
        if "status" in header:
            for reader in self.outputs.pop(job, ()):  # type: ignore[arg-type]
                reader.feed_eof()
        self._dispatch(header)

    def kill_group(self, job: int, pid: int, sig: int) -> None:
        """Through the runner while it lives; else by the pid, through a session of its own."""
        task = asyncio.ensure_future(self._signal(job, pid, sig) if self.alive and self.channel is not None
                                     else self.site.run_quietly(_kill_command(pid, sig)))
        self.kills.add(task)
        task.add_done_callback(self.kills.discard)

    async def _signal(self, job: int, pid: int, sig: int) -> None:
        try:
            await self._send({"op": "signal", "job": job, "signal": sig}, b"", [])
        except OSError:
            await self.site.run_quietly(_kill_command(pid, sig))

    def _lost(self) -> None:
        for readers in self.outputs.values():
            for reader in readers:
                reader.feed_eof()
        self.outputs.clear()
        super()._lost()

    async def stop(self) -> None:
        """End the channel: the runner sees the end of its stdin, kills its children's process groups and exits.
        What it said before goes through first (its reader thread ends), then running jobs are lost."""
        self.alive = False
        channel, self.channel = self.channel, None
        if channel is not None:
            try:
                await self.site.call(channel.close)
            except Exception as exc:  # pylint: disable=broad-except
                log.info("%s: closing: %r", self.label, exc)
            for thread in self.readers:
                await self.site.call(thread.join, 5.0)
        await asyncio.sleep(0)  # the frames the readers handed over run before the rest is declared lost
        self._lost()


class RemoteWarmProcess(WarmProcess):
    """A module run forked by a runner on the target; its output arrives through the runner's frames."""

    def __init__(self, parent: RemoteParent, job: int, pid: int,
                 readers: Tuple[asyncio.StreamReader, asyncio.StreamReader]) -> None:
        super().__init__(parent, job, pid, -1, -1)
        self.remote = parent
        self._fds = []
        self.stdout, self.stderr = readers
        self.label = "remote process group %d on %s" % (pid, parent.site.label)
        self.details = {"host": parent.site.label, "pgid": pid, "warm": True}

    async def connect(self) -> None:
        """The readers are fed by the runner's frames."""

    async def cleanup(self) -> None:
        await super().cleanup()
        self.remote.outputs.pop(self.job, None)  # anything still written by what it left behind is dropped
