# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Warm module runs (natsops_executor.warm) on real AnsiballZ payloads: what is recognised and what runs cold (and
why), and that a warm run gives what a cold one gives - rc, stderr, the module's JSON - for builtin modules and for
a test module that fails, raises, exits with a code, kills itself, runs into a timeout, registers atexit handlers
or starts a thread.

The payloads are made at test time by the installed ansible-core (ansiballz_payloads.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import pathlib
import signal
import time
import zipfile
from typing import Any, Dict, Optional, Tuple

import pytest
import pytest_asyncio

from natsops_executor import jobs, warm
from natsops_executor._wire.contract import E_INTERRUPTED, E_TIMEOUT, WireError
from natsops_executor._wire.messages import ExecRequest
from natsops_executor.hosts.local import LocalHost

import ansiballz_payloads

ASYNC = pytest.mark.asyncio(loop_scope="module")  # one event loop: the warm pool fixture lives across tests

PYTHON = ansiballz_payloads.PYTHON
CHUNK = 64 * 1024
COLD = LocalHost()
_tail_args = ansiballz_payloads.tail_args


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> Dict[str, bytes]:
    """{name: pipelined stdin} for each module run of the capture playbook (shebang = PYTHON)."""
    return ansiballz_payloads.capture(tmp_path_factory.mktemp("warm-payloads"))


def _req(**fields: Any) -> ExecRequest:
    # warm parents are keyed by the whole environment; pytest changes this variable for every test phase
    os.environ["PYTEST_CURRENT_TEST"] = __name__
    fields.setdefault("command", "/bin/sh -c '%s && sleep 0'" % PYTHON)
    return ExecRequest.new("_INBOX.test", **fields)


async def _run(host: LocalHost, source: bytes, info: Optional[Dict[str, Any]] = None,
               **fields: Any) -> Tuple[int, bytes, bytes]:
    output = ansiballz_payloads.Output()
    result = await jobs.run_command(host, _req(**fields), source, output, CHUNK, info)  # type: ignore[arg-type]
    return result.rc, bytes(output.streams["stdout"]), bytes(output.streams["stderr"])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool(payloads):
    """A warm pool whose parent for PYTHON is ready."""
    pool = warm.WarmPool()
    host = LocalHost(warm=pool)
    info: Dict[str, Any] = {}
    await _run(host, payloads["ping"], info)  # cold, starts the parent
    assert info == {}  # the job's record (log line, audit) says warm only for warm runs
    for _attempt in range(300):
        parents = list(pool.parents.values())
        if parents and parents[0].ready.done():
            break
        await asyncio.sleep(0.05)
    assert pool.stats()["warm_parents"] == 1 and not parents[0].ready.exception()
    yield pool
    await pool.close()


async def _warm(pool: warm.WarmPool, source: bytes, **fields: Any) -> Tuple[int, bytes, bytes]:
    hits = pool.hits
    info: Dict[str, Any] = {}
    outcome = await _run(LocalHost(warm=pool), source, info, **fields)
    assert pool.hits == hits + 1, pool.stats()
    assert info == {"warm": True}
    return outcome


# ---------------------------------------------------------------- recognition

def test_the_installed_ansible_core_wrapper_is_on_the_allowlist(payloads):
    from ansible.release import __version__ as core_version  # pylint: disable=import-outside-toplevel
    text = payloads["ping"].decode()
    body = text.partition("\n")[2]
    digest = hashlib.sha256(body[:body.index(warm._TAIL)].encode()).hexdigest()  # pylint: disable=protected-access
    allowlist = warm.load_allowlist()
    assert digest in allowlist, "ansible-core %s: add %s to warm_allowlist.json" % (core_version, digest)
    assert core_version.startswith(allowlist[digest])


@pytest.mark.parametrize("name", ["ping", "command", "stat", "file", "copy", "setup", "behave-ok"])
def test_real_payloads_are_recognised(payloads, name):
    verdict = warm.recognise(_req(), payloads[name], warm.load_allowlist())
    assert isinstance(verdict, warm.Recognised), verdict
    assert verdict.interpreter == PYTHON and verdict.ansible_core == "2.19"


def test_one_key_for_every_module_of_one_interpreter_and_environment(payloads):
    keys = {warm.recognise(_req(), payloads[n], warm.load_allowlist()).key for n in ("ping", "command", "setup")}
    assert len(keys) == 1
    other = warm.recognise(_req(env={"NATSOPS_TEST": "1"}), payloads["ping"], warm.load_allowlist())
    assert other.key not in keys


def _cold_reason(req: ExecRequest, source: bytes, allowlist: Optional[Dict[str, str]] = None) -> str:
    verdict = warm.recognise(req, source, warm.load_allowlist() if allowlist is None else allowlist)
    assert isinstance(verdict, warm.Cold)
    assert verdict.detail and "\n" not in verdict.detail
    return verdict.reason


def _edit(source: bytes, old: bytes, new: bytes) -> bytes:
    assert old in source
    return source.replace(old, new, 1)


@pytest.mark.parametrize("command", [
    "%s" % PYTHON,
    "/bin/sh -c '%s'" % PYTHON,
    "/bin/sh -c '%s && sleep 1'" % PYTHON,
    "/bin/sh -c '%s; rm -rf /tmp/x && sleep 0'" % PYTHON,
    "/bin/sh -c 'X=$(id) %s && sleep 0'" % PYTHON,
    "/bin/sh -c \"%s && sleep 0\"" % PYTHON,
    "/bin/bash -c '%s && sleep 0'" % PYTHON,
    "/bin/sh -c '%s -u && sleep 0'" % PYTHON,
    "sudo -H -S -n -u root /bin/sh -c 'echo BECOME-SUCCESS-x ; %s' && sleep 0" % PYTHON,
])
def test_other_commands_run_cold(payloads, command):
    assert _cold_reason(_req(command=command), payloads["ping"]) in (warm.COLD_NOT_MODULE, warm.COLD_INTERPRETER)


def test_env_assignments_in_the_command_are_accepted_and_keyed(payloads):
    plain = warm.recognise(_req(), payloads["ping"], warm.load_allowlist())
    assigned = warm.recognise(_req(command="/bin/sh -c 'LANG=C.UTF-8 X='\"'\"'a b'\"'\"' %s && sleep 0'" % PYTHON),
                              payloads["ping"], warm.load_allowlist())
    assert isinstance(assigned, warm.Recognised), assigned
    assert assigned.env["X"] == "a b" and assigned.key != plain.key


def test_become_pty_and_argv_run_cold(payloads):
    source = payloads["ping"]
    assert _cold_reason(_req(become={"success": "BECOME-OK", "timeout": 5}), source) == warm.COLD_BECOME
    assert _cold_reason(_req(pty=True), source) == warm.COLD_PTY
    assert _cold_reason(_req(command=None, argv=[PYTHON]), source) == warm.COLD_NOT_MODULE


def test_a_caller_that_opts_out_runs_cold(payloads):
    assert _cold_reason(_req(warm=False), payloads["ping"]) == warm.COLD_OPT_OUT
    assert isinstance(warm.recognise(_req(warm=True), payloads["ping"], warm.load_allowlist()), warm.Recognised)


def test_an_unknown_wrapper_runs_cold_with_a_reason(payloads):
    assert _cold_reason(_req(), payloads["ping"], allowlist={}) == warm.COLD_WRAPPER
    edited = _edit(payloads["ping"], b"import datetime\n", b"import datetime, os\n")
    assert _cold_reason(_req(), edited) == warm.COLD_WRAPPER


def test_a_tail_other_than_one_literal_call_runs_cold(payloads):
    source = payloads["ping"]
    assert _cold_reason(_req(), _edit(source, b"profile='legacy'", b"profile=__import__('os').getcwd()")) == warm.COLD_TAIL
    assert _cold_reason(_req(), source + b"print('more')\n") == warm.COLD_TAIL
    assert _cold_reason(_req(), _edit(source, b"datetime.timezone.utc", b"open('/etc/passwd')")) == warm.COLD_TAIL
    assert _cold_reason(_req(), _edit(source, b"extensions={}", b"extensions={'debugpy': {}}")) == warm.COLD_EXTENSIONS
    assert _cold_reason(_req(), _edit(source, b"zip_data='", b"zip_data=str(1/0) + '")) == warm.COLD_TAIL
    assert _cold_reason(_req(), _edit(source, b"zip_data='", b"zip_data=''\n,zip_data='")) == warm.COLD_TAIL


def test_a_hostile_tail_runs_cold_never_raises(payloads):
    """Nesting deep enough to exhaust the parser, and a stdin above the inspection bound, run cold with a reason."""
    deep = b"params=" + b"[" * 100000 + b"]" * 100000 + b","
    assert _cold_reason(_req(), _edit(payloads["ping"], b"profile='legacy',", deep + b"profile='legacy',")) == warm.COLD_TAIL
    padded = payloads["ping"] + b"#" * (warm.MAX_RECOGNISED + 1)
    assert _cold_reason(_req(), padded) == warm.COLD_TOO_LARGE


def test_a_shebang_for_another_interpreter_runs_cold(payloads):
    edited = b"#!/usr/bin/python9\n" + payloads["ping"].partition(b"\n")[2]
    assert _cold_reason(_req(), edited) == warm.COLD_INTERPRETER


# ---------------------------------------------------------------- cold vs warm


@ASYNC
@pytest.mark.parametrize("name", ["ping", "command", "stat", "file", "copy", "setup", "behave-ok", "behave-fail",
                                  "behave-exit3", "behave-atexit"])
async def test_warm_equals_cold(pool, payloads, name):
    cold = await _run(COLD, payloads[name])
    hot = await _warm(pool, payloads[name])
    assert hot[0] == cold[0]
    assert hot[2] == cold[2]
    assert ansiballz_payloads.result(hot[1]) == ansiballz_payloads.result(cold[1])


@ASYNC
async def test_the_child_mirrors_a_cold_interpreter(pool, payloads, tmp_path):
    cold = await _run(COLD, payloads["behave-ok"], cwd=str(tmp_path))
    hot = await _warm(pool, payloads["behave-ok"], cwd=str(tmp_path))
    assert hot[0] == cold[0] == 0 and hot[2] == cold[2]
    result = json.loads(hot[1])
    assert result["cwd"] == str(tmp_path) and result["stdin_at_eof"] and result["argv"][0].endswith(".py")
    assert result["path0"].endswith("_payload.zip")
    assert result["pid_is_pgid"]  # its own session and process group, as the cold run's shell
    assert ansiballz_payloads.result(hot[1]) == ansiballz_payloads.result(cold[1])


@ASYNC
async def test_a_raising_module(pool, payloads):
    cold = await _run(COLD, payloads["behave-raise"])
    hot = await _warm(pool, payloads["behave-raise"])
    assert hot[0] == cold[0] == 1 and hot[2] == cold[2]
    assert ansiballz_payloads.result(hot[1]) == ansiballz_payloads.result(cold[1]) and "the module raised" in hot[1].decode()


@ASYNC
async def test_a_module_killed_by_a_signal(pool, payloads):
    cold = await _run(COLD, payloads["behave-signal"])
    hot = await _warm(pool, payloads["behave-signal"])
    assert hot == cold and hot[0] == 128 + signal.SIGKILL and hot[2] == b"Killed\n"  # as /bin/sh says it


@ASYNC
async def test_a_thread_started_by_the_module_runs_to_its_end(pool, payloads):
    marker = pathlib.Path(payloads["_work"].decode()) / "marker-thread"
    for host in (COLD, None):
        if marker.exists():
            marker.unlink()
        outcome = await (_run(COLD, payloads["behave-thread"]) if host is COLD else _warm(pool, payloads["behave-thread"]))
        assert outcome[0] == 0 and marker.read_text() == "thread ran"


@ASYNC
async def test_a_timeout_kills_the_warm_child_by_process_group(pool, payloads):
    marker = pathlib.Path(payloads["_work"].decode()) / "marker-sleep"
    marker.write_text("")
    hits = pool.hits
    started = time.monotonic()
    with pytest.raises(WireError) as info:
        await _run(LocalHost(warm=pool), payloads["behave-sleep"], timeout=1.0)
    assert info.value.code == E_TIMEOUT and info.value.details.get("warm") and pool.hits == hits + 1
    assert time.monotonic() - started < 5
    pgid = info.value.details["pgid"]
    assert await ansiballz_payloads.group_gone(pgid), "process group %d survived the timeout" % pgid
    marker.unlink()


def _override(source: bytes, member: str) -> bytes:
    """The payload with one module_utils file changed, as a playbook-local module_utils override ships it."""
    text = source.decode()
    args = _tail_args(source)
    raw = base64.b64decode(args["zip_data"])
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as old, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = old.read(info.filename)
            if info.filename == member:
                data += b"\n# overridden\n"
            new.writestr(info, data)
    return text.replace(args["zip_data"], base64.b64encode(out.getvalue()).decode(), 1).encode()


@ASYNC
async def test_a_module_utils_override_runs_cold(pool, payloads):
    edited = _override(payloads["ping"], "ansible/module_utils/common/text/converters.py")
    before = dict(pool.reasons)
    rc, stdout, _stderr = await _run(LocalHost(warm=pool), edited)
    assert rc == 0 and json.loads(stdout)["ping"] == "pong"
    assert pool.reasons[warm.COLD_MODULE_UTILS] == before.get(warm.COLD_MODULE_UTILS, 0) + 1


@ASYNC
async def test_an_unknown_wrapper_runs_cold_never_fails(payloads):
    pool = warm.WarmPool(allowlist={})
    rc, stdout, _stderr = await _run(LocalHost(warm=pool), payloads["ping"])
    assert rc == 0 and json.loads(stdout)["ping"] == "pong"
    assert pool.stats()["warm_cold_reasons"] == {warm.COLD_WRAPPER: 1} and pool.stats()["warm_parents"] == 0
    await pool.close()


@ASYNC
async def test_a_warm_parent_that_dies_mid_run_loses_the_run_and_the_next_one_runs_cold(payloads):
    pool = warm.WarmPool()
    host = LocalHost(warm=pool)
    await _run(host, payloads["ping"])
    for _attempt in range(300):
        parent = next(iter(pool.parents.values()))
        if parent.ready.done():
            break
        await asyncio.sleep(0.05)
    marker = pathlib.Path(payloads["_work"].decode()) / "marker-sleep"
    marker.write_text("")
    job = asyncio.ensure_future(_run(host, payloads["behave-sleep"], timeout=30))
    for _attempt in range(100):
        if parent.running:
            break
        await asyncio.sleep(0.05)
    child = next(iter(parent.running.values())).pid
    os.kill(parent.proc.pid, signal.SIGKILL)
    with pytest.raises(WireError) as info:
        await asyncio.wait_for(job, 10)
    assert info.value.code == E_INTERRUPTED
    for _attempt in range(50):
        try:
            os.killpg(child, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the lost run's process group %d survived" % child)
    marker.unlink()
    rc, stdout, _stderr = await _run(host, payloads["ping"])
    assert rc == 0 and json.loads(stdout)["ping"] == "pong"
    assert pool.stats()["warm_cold_reasons"].get(warm.COLD_WARMING) == 2  # cold, and a new parent warms up
    await pool.close()


async def _warmed(pool: warm.WarmPool, host: LocalHost, source: bytes, **fields: Any) -> warm._Parent:  # pylint: disable=protected-access
    """Run ``source`` cold once (it starts a parent for its key) and wait until that parent is ready."""
    before = set(map(id, pool.parents.values()))
    await _run(host, source, **fields)
    started = [p for p in pool.parents.values() if id(p) not in before]
    assert started, pool.stats()
    for _attempt in range(300):
        if started[0].ready.done():
            return started[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the warm parent did not become ready")


@ASYNC
async def test_a_parent_is_replaced_after_its_fork_limit(payloads, monkeypatch):
    monkeypatch.setattr(warm, "MAX_FORKS", 2)
    pool = warm.WarmPool()
    host = LocalHost(warm=pool)
    first = await _warmed(pool, host, payloads["ping"])
    for _run_number in range(2):
        await _warm(pool, payloads["ping"])
    assert first.forks == 2 and not first.usable
    second = await _warmed(pool, host, payloads["ping"])  # cold: warming_up again
    assert second is not first and pool.stats()["warm_parents_started"] == 2
    await _warm(pool, payloads["ping"])
    await pool.close()
    assert first.proc.returncode is not None and second.proc.returncode is not None


@ASYNC
async def test_the_number_of_parents_is_bounded(payloads):
    pool = warm.WarmPool(max_parents=1)
    host = LocalHost(warm=pool)
    first = await _warmed(pool, host, payloads["ping"])
    second = await _warmed(pool, host, payloads["ping"], env={"NATSOPS_TEST_KEY": "2"})  # another environment
    assert list(pool.parents.values()) == [second] and first in pool.retiring
    await _warm(pool, payloads["ping"], env={"NATSOPS_TEST_KEY": "2"})
    await pool.close()
    assert first.proc.returncode is not None


@ASYNC
async def test_a_parent_exits_when_its_executor_side_goes_away(payloads):
    pool = warm.WarmPool()
    host = LocalHost(warm=pool)
    parent = await _warmed(pool, host, payloads["ping"])
    parent.sock.close()  # what the executor's death does to the socket pair
    parent.sock = None
    await asyncio.wait_for(parent.proc.wait(), 5)
    await pool.close()


@ASYNC
async def test_a_run_the_parent_is_slow_to_start_is_lost_never_run_twice(payloads, monkeypatch):
    pool = warm.WarmPool()
    host = LocalHost(warm=pool)
    parent = await _warmed(pool, host, payloads["ping"])
    marker = pathlib.Path(payloads["_work"].decode()) / "marker-thread"
    if marker.exists():
        marker.unlink()
    monkeypatch.setattr(warm, "FORK_TIMEOUT", 0)
    with pytest.raises(WireError) as info:
        await _run(host, payloads["behave-thread"])
    assert info.value.code == E_INTERRUPTED and not parent.usable
    await asyncio.sleep(1.0)
    assert not marker.exists()  # the late child was killed, and nothing ran it cold
    await pool.close()


@ASYNC
async def test_an_idle_parent_is_stopped(payloads, monkeypatch):
    monkeypatch.setattr(warm, "IDLE_TIMEOUT", 1.5)
    pool = warm.WarmPool()
    host = LocalHost(warm=pool)
    parent = await _warmed(pool, host, payloads["ping"])
    await _warm(pool, payloads["ping"])
    await asyncio.wait_for(parent.proc.wait(), 10)
    assert not pool.parents and not pool.retiring
    await pool.close()
