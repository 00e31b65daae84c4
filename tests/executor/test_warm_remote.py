# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Warm runners of zone mode (warm_remote.py) against real payloads of the installed ansible-core: the runner
program runs in stream mode behind a pipe-backed stand-in for an SSH session (``PipeSite``: the same blocking
channel calls paramiko's channel offers), and every result is compared with a cold run of the same payload.
The SSH path itself is tested in the lab (tests/lab/test_zone.py)."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shlex
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
import pytest_asyncio

from natsops_executor import jobs, warm
from natsops_executor._wire.contract import E_INTERRUPTED, E_TIMEOUT, WireError
from natsops_executor._wire.messages import ExecRequest
from natsops_executor.hosts.base import Host, Process, run_blocking
from natsops_executor.hosts.local import LocalHost
from natsops_executor.warm_remote import Channel, RemoteSite

import ansiballz_payloads

ASYNC = pytest.mark.asyncio(loop_scope="module")
PYTHON = ansiballz_payloads.PYTHON
CHUNK = 64 * 1024
COLD = LocalHost()


class PipeChannel(Channel):
    def __init__(self, proc: "subprocess.Popen[bytes]") -> None:
        self.proc = proc

    def sendall(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, size: int) -> bytes:
        assert self.proc.stdout is not None
        return os.read(self.proc.stdout.fileno(), size)

    def recv_stderr(self, size: int) -> bytes:
        assert self.proc.stderr is not None
        return os.read(self.proc.stderr.fileno(), size)

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass


class PipeSite(RemoteSite):
    """A 'target' that is this machine, reached through pipes instead of an SSH session."""

    def __init__(self, home: str, login_says: str = "") -> None:
        self.where = "test@pipe:22"
        self.label = "test@pipe"
        self.home = home
        self.login_says = login_says  # what a login script prints before the command runs
        self.procs: List["subprocess.Popen[bytes]"] = []
        self.commands: List[str] = []

    async def call(self, func: Any, *args: Any) -> Any:
        return await run_blocking(func, *args)

    async def open(self, command: str) -> Channel:
        self.commands.append(command)
        if self.login_says:
            command = "printf %s; %s" % (shlex.quote(self.login_says), command)
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,  # pylint: disable=consider-using-with
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.home, start_new_session=True)
        self.procs.append(proc)
        return PipeChannel(proc)

    async def run_quietly(self, command: str) -> None:
        subprocess.run(["/bin/sh", "-c", command], check=False, capture_output=True)


class PipeHost(Host):
    """Like SSHHost.spawn: the warm pool first (with this site), else cold (here: on this machine)."""

    where = "@pipe"

    def __init__(self, pool: warm.WarmPool, site: PipeSite) -> None:
        self.pool = pool
        self.site = site

    async def spawn(self, req: ExecRequest, stdin: bytes = b"") -> Process:
        process = await self.pool.spawn(req, stdin, self.site)
        return process if process is not None else await COLD.spawn(req, stdin)

    async def landing(self, path: str) -> Any:
        raise NotImplementedError

    async def open_file(self, path: str) -> Any:
        raise NotImplementedError

    async def state(self, path: str) -> Any:
        raise NotImplementedError

    async def chmod(self, path: str, mode: int) -> None:
        raise NotImplementedError

    async def copy_in(self, source: str, dest: str, deadline: float) -> Any:
        raise NotImplementedError


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (an orphan waits for whoever adopts it to reap it)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> Dict[str, bytes]:
    return ansiballz_payloads.capture(tmp_path_factory.mktemp("remote-payloads"))


def _req(**fields: Any) -> ExecRequest:
    fields.setdefault("command", "/bin/sh -c '%s && sleep 0'" % PYTHON)
    return ExecRequest.new("_INBOX.test", **fields)


async def _run(host: Host, source: bytes, info: Optional[Dict[str, Any]] = None, **fields: Any) -> Tuple[int, bytes, bytes]:
    output = ansiballz_payloads.Output()
    result = await jobs.run_command(host, _req(**fields), source, output, CHUNK, info)  # type: ignore[arg-type]
    return result.rc, bytes(output.streams["stdout"]), bytes(output.streams["stderr"])


async def _ready(pool: warm.WarmPool) -> Any:
    """The pool's one runner, once it is ready (it started without an error)."""
    for _attempt in range(300):
        parents = list(pool.parents.values())
        if parents and parents[0].ready.done():
            assert not parents[0].ready.exception()
            return parents[0]
        await asyncio.sleep(0.05)
    pytest.fail("the warm runner did not get ready")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def remote(payloads, tmp_path_factory):
    """A pool with one runner ready behind a PipeSite; yields (host, pool, site)."""
    pool = warm.WarmPool(max_parents=8)
    site = PipeSite(str(tmp_path_factory.mktemp("remote-home")))
    host = PipeHost(pool, site)
    info: Dict[str, Any] = {}
    await _run(host, payloads["ping"], info)  # cold: starts the runner
    assert info == {} and pool.reasons[warm.COLD_WARMING] == 1
    await _ready(pool)
    yield host, pool, site
    await pool.close()
    for proc in site.procs:
        proc.wait(10)


async def _warm(remote_: Tuple[PipeHost, warm.WarmPool, PipeSite], source: bytes, **fields: Any) -> Tuple[int, bytes, bytes]:
    host, pool, _site = remote_
    hits = pool.hits
    info: Dict[str, Any] = {}
    outcome = await _run(host, source, info, **fields)
    assert pool.hits == hits + 1, pool.stats()
    assert info == {"warm": True}
    return outcome


def test_recognition_needs_an_absolute_interpreter_and_keys_by_target(payloads):
    allow = warm.load_allowlist()
    one = warm.recognise_remote(_req(), payloads["ping"], allow, "root@10.0.0.1:22")
    two = warm.recognise_remote(_req(), payloads["command"], allow, "root@10.0.0.1:22")
    other = warm.recognise_remote(_req(), payloads["ping"], allow, "root@10.0.0.2:22")
    assert isinstance(one, warm.Recognised) and one.key == two.key != other.key
    assert one.env == {} and one.cwd == ""
    relative = b"#!python3\n" + payloads["ping"].partition(b"\n")[2]
    verdict = warm.recognise_remote(_req(command="/bin/sh -c 'python3 && sleep 0'"), relative, allow, "root@h:22")
    assert isinstance(verdict, warm.Cold) and verdict.reason == warm.COLD_INTERPRETER
    become = warm.recognise_remote(_req(become={"success": "BECOME-OK", "timeout": 5}), payloads["ping"], allow, "r@h:22")
    assert isinstance(become, warm.Cold) and become.reason == warm.COLD_BECOME


@ASYNC
@pytest.mark.parametrize("name", ["ping", "command", "stat", "file", "copy", "setup", "behave-ok", "behave-fail",
                                  "behave-exit3", "behave-atexit", "behave-raise"])
async def test_remote_warm_equals_cold(remote, payloads, name):
    cold = await _run(COLD, payloads[name], cwd=remote[2].home)
    hot = await _warm(remote, payloads[name])
    assert hot[0] == cold[0]
    assert hot[2] == cold[2]
    assert ansiballz_payloads.result(hot[1]) == ansiballz_payloads.result(cold[1])


@ASYNC
async def test_one_runner_serves_every_run(remote, payloads):
    _host, pool, site = remote
    for _round in range(3):
        await _warm(remote, payloads["command"])
    assert len(site.commands) == 1 and pool.stats()["warm_parents"] == 1
    assert " stream " in site.commands[0] and "natsops-warm-parent" in site.commands[0]


@ASYNC
async def test_the_login_directory_and_a_requested_cwd(remote, payloads, tmp_path):
    hot = json.loads((await _warm(remote, payloads["behave-ok"]))[1])
    assert hot["cwd"] == remote[2].home
    hot = json.loads((await _warm(remote, payloads["behave-ok"], cwd=str(tmp_path)))[1])
    assert hot["cwd"] == str(tmp_path) and hot["stdin_at_eof"] and hot["pid_is_pgid"]


@ASYNC
async def test_a_module_killed_by_a_signal(remote, payloads):
    cold = await _run(COLD, payloads["behave-signal"])
    hot = await _warm(remote, payloads["behave-signal"])
    assert hot == cold and hot[0] == 128 + signal.SIGKILL and hot[2] == b"Killed\n"


@ASYNC
async def test_large_output_arrives_whole(remote, payloads):
    assert payloads["command"].count(b"/bin/true") == 1
    source = payloads["command"].replace(b"/bin/true", b"seq 1 100000")  # about 600 KB of JSON
    cold = await _run(COLD, source, cwd=remote[2].home)
    hot = await _warm(remote, source)
    assert len(hot[1]) > 500000 and ansiballz_payloads.result(hot[1]) == ansiballz_payloads.result(cold[1])


@ASYNC
async def test_a_timeout_kills_the_remote_child_by_process_group(remote, payloads):
    marker = pathlib.Path(payloads["_work"].decode()) / "marker-sleep"
    marker.write_text("")
    _host, pool, _site = remote
    hits = pool.hits
    started = time.monotonic()
    with pytest.raises(WireError) as info:
        await _run(remote[0], payloads["behave-sleep"], timeout=1.0)
    assert info.value.code == E_TIMEOUT and pool.hits == hits + 1
    assert time.monotonic() - started < 5
    pgid = info.value.details["pgid"]
    assert await ansiballz_payloads.group_gone(pgid), "process group %d survived the timeout" % pgid
    marker.unlink()


@ASYNC
async def test_a_runner_that_dies_loses_its_running_job_and_the_next_run_is_cold(payloads, tmp_path):
    pool = warm.WarmPool(max_parents=2)
    site = PipeSite(str(tmp_path))
    host = PipeHost(pool, site)
    marker = pathlib.Path(payloads["_work"].decode()) / "marker-sleep"  # the module sleeps while it exists
    marker.write_text("")
    try:
        await _run(host, payloads["ping"])
        parents = [await _ready(pool)]
        job = asyncio.ensure_future(_run(host, payloads["behave-sleep"]))
        for _attempt in range(100):
            if parents[0].running:
                break
            await asyncio.sleep(0.05)
        pgid = next(iter(parents[0].running.values())).pid
        os.killpg(site.procs[0].pid, signal.SIGKILL)  # the runner (and the shell that started it) die
        with pytest.raises(WireError) as info:
            await asyncio.wait_for(job, 10)
        assert info.value.code == E_INTERRUPTED
        for _attempt in range(50):
            if not _running(pgid):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the lost run's process group %d survived" % pgid)
        rc, _out, _err = await _run(host, payloads["ping"])
        assert rc == 0 and pool.reasons[warm.COLD_WARMING] >= 2  # cold again, a new runner starting
    finally:
        marker.unlink()
        await pool.close()
        for proc in site.procs:
            proc.wait(10)


@ASYNC
async def test_closing_the_pool_ends_the_runner_and_its_children(payloads, tmp_path):
    pool = warm.WarmPool(max_parents=2)
    site = PipeSite(str(tmp_path))
    host = PipeHost(pool, site)
    await _run(host, payloads["ping"])
    await _ready(pool)
    await pool.close()
    assert site.procs[0].wait(10) == 0


def test_environment_names_a_shell_cannot_export_run_cold(payloads):
    """The runner's start command exports the request's environment: a name that is no shell name never gets
    there (the cold run then refuses it, as without warm runs)."""
    verdict = warm.recognise_remote(_req(env={"A;touch /tmp/natsops-injected;B": "v"}), payloads["ping"],
                                    warm.load_allowlist(), "root@h:22")
    assert isinstance(verdict, warm.Cold) and verdict.reason == warm.COLD_NOT_MODULE


@ASYNC
async def test_a_directory_the_child_cannot_enter_runs_cold(remote, payloads, tmp_path):
    _host, pool, _site = remote
    hits, cwd = pool.hits, pool.reasons[warm.COLD_CWD]
    with pytest.raises(WireError):  # the cold run's shell cannot cd there either: the request fails as it did
        await _run(remote[0], payloads["ping"], cwd=str(tmp_path / "missing"))
    assert pool.hits == hits and pool.reasons[warm.COLD_CWD] == cwd + 1
    assert (await _warm(remote, payloads["ping"]))[0] == 0  # the runner serves the next run


@ASYNC
async def test_a_login_script_that_prints_does_not_confuse_the_runner(payloads, tmp_path):
    pool = warm.WarmPool(max_parents=2)
    site = PipeSite(str(tmp_path), login_says="Welcome to a noisy host\n")
    host = PipeHost(pool, site)
    try:
        await _run(host, payloads["ping"])
        await _ready(pool)
        hits = pool.hits
        rc, out, _err = await _run(host, payloads["ping"])
        assert rc == 0 and json.loads(out)["ping"] == "pong" and pool.hits == hits + 1
    finally:
        await pool.close()
        for proc in site.procs:
            proc.wait(10)
