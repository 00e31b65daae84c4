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
import socket
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


def test_a_call_of_another_shape_is_never_parsed(payloads, monkeypatch):
    """Parsing a contrived call could take seconds (many small expressions); it is parsed only once its lines are
    ``name=<literal>,`` with short non-string values, so parsing costs time in proportion to its length."""
    def parse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("parsed")

    source = payloads["ping"]
    monkeypatch.setattr(warm.ast, "parse", parse)
    contrived = [b"params=(" + b"a," * 200000 + b"),", b"params=[1] * 5,", b"params='a' 'b',", b"params='a\\\nb',",
                 b"extensions={" + b"1: 2, " * 1000 + b"},"]
    for line in contrived:
        assert _cold_reason(_req(), _edit(source, b"profile='legacy',", line + b"profile='legacy',")) == warm.COLD_TAIL
    large = b"ansible_module='" + b"x" * warm.MAX_CALL + b"',"
    assert _cold_reason(_req(), _edit(source, b"profile='legacy',", large + b"profile='legacy',")) == warm.COLD_TOO_LARGE


@ASYNC
async def test_only_a_large_stdin_is_recognised_in_the_file_threads(payloads, monkeypatch):
    """A payload (about 170 KB) is recognised in the event loop: a thread would cost more than the work; a stdin
    above INLINE_RECOGNITION in the file threads, where hashing it lets the event loop run."""
    threads = []

    async def in_thread(func: Any, *args: Any) -> Any:
        threads.append(func)
        return func(*args)

    monkeypatch.setattr(warm, "run_blocking", in_thread)
    pool = warm.WarmPool()
    try:
        assert await pool.spawn(_req(), payloads["ping"]) is None and not threads  # cold: it starts the parent
        padded = _edit(payloads["ping"], b"profile='legacy',", b"profile='" + b"x" * warm.INLINE_RECOGNITION + b"',")
        assert await pool.spawn(_req(), padded) is None and threads == [warm.recognise]
    finally:
        await pool.close()


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
    # the module's code, compiled once by the warm parent, carries the path a cold run compiles it under
    assert result["code_file"] == result["file"] and result["file"].endswith("_payload.zip/ansible/legacy/natsops_test_behave.py")
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


# ---------------------------------------------------------------- code the warm parent compiles for its children

def _same_code(one: Any, other: Any) -> bool:
    """Two code objects compile the same thing (column positions aside), nested code included."""
    if type(one) is not type(other):
        return False
    if not isinstance(one, type(_same_code.__code__)):
        return bool(one == other)
    fields = ("co_code", "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_filename", "co_name",
              "co_firstlineno", "co_flags", "co_argcount", "co_kwonlyargcount", "co_nlocals")
    return all(getattr(one, f) == getattr(other, f) for f in fields) and list(one.co_lines()) == list(other.co_lines()) \
        and len(one.co_consts) == len(other.co_consts) and all(map(_same_code, one.co_consts, other.co_consts))


def _prepared(payload: bytes) -> Tuple[Any, str, str]:
    """A warm parent's state (not started: nothing is imported or hooked) that has prepared one run of ``payload``."""
    from natsops_executor import _warm_parent  # pylint: disable=import-outside-toplevel
    parent = _warm_parent._Parent(None)  # pylint: disable=protected-access
    zip_data = _tail_args(payload)["zip_data"]
    text = parent.prepare({"zip": hashlib.sha256(zip_data.encode()).hexdigest()}, payload)
    return parent, text, zip_data


@pytest.mark.parametrize("name", ["command", "setup", "behave-raise"])
def test_a_run_compiles_as_its_whole_source_would(payloads, name):
    """The child runs the wrapper's code (compiled once) and then the call after it, compiled with a stand-in for
    the payload's base64 literal put back afterwards: the same code as compiling the whole source."""
    parent, text, zip_data = _prepared(payloads[name])
    codes = parent.program(text)
    assert len(codes) == 2, "the wrapper's code was not kept"
    end = text.index(warm._TAIL)  # pylint: disable=protected-access
    whole = compile(text, "<stdin>", "exec", dont_inherit=True)
    wrapper = compile(text[:end], "<stdin>", "exec", dont_inherit=True)
    call = compile("\n" * text.count("\n", 0, end) + text[end:], "<stdin>", "exec", dont_inherit=True,
                   flags=whole.co_flags & 0x1000000)  # from __future__ import annotations, as the wrapper says
    assert _same_code(codes[0], wrapper) and _same_code(codes[1], call)
    assert zip_data in codes[1].co_consts
    lines = {line for _start, _end, line in codes[1].co_lines() if line}
    assert lines and lines <= {line for _start, _end, line in whole.co_lines()} and min(lines) > text.count("\n", 0, end)


def test_a_literal_that_is_not_plain_base64_compiles_whole(payloads):
    parent, text, zip_data = _prepared(payloads["ping"])
    odd = text.replace("zip_data='" + zip_data[:8], "zip_data='\\x41" + zip_data[1:8])
    assert len(parent.program(odd)) == 1
    assert len(parent.program(text.replace("_ansiballz_main(", "_ansiballz_main(\n", 1))) == 1  # another wrapper
    stand_in = text.replace("ansible_module='", "ansible_module='%s" % parent.placeholder)
    assert len(parent.program(stand_in)) == 1


@pytest.mark.parametrize("name", ["command", "setup", "behave-ok"])
def test_sources_compiled_by_the_parent_equal_the_childs_own(payloads, name):
    """What zipimport gets in a child for a payload member: the code compiled from identical bytes, under the
    child's own path; bytes the parent has not compiled (a playbook-local override) are compiled as before."""
    parent, _text, zip_data = _prepared(payloads[name])
    sources = parent.sources
    assert sources.usable
    compiled = 0
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(zip_data))) as archive:
        for member in archive.namelist():
            if not member.endswith(".py"):
                continue
            source = archive.read(member)
            path = "/tmp/ansible_x_payload_1/ansible_x_payload.zip/" + member
            mine = sources.compile_source(path, source)
            assert _same_code(mine, sources.original(path, source)), member
            compiled += hashlib.sha256(source).digest() in sources.codes
            changed = source + b"\nOVERRIDDEN = True\n"
            assert "OVERRIDDEN" in sources.compile_source(path, changed).co_names
    assert compiled >= 10  # the members the warm parent did not import (none here: nothing was imported)


def test_the_parent_splits_where_the_executor_recognises():
    from natsops_executor import _warm_parent  # pylint: disable=import-outside-toplevel
    assert _warm_parent._TAIL == warm._TAIL  # pylint: disable=protected-access


def test_a_member_that_warns_is_left_to_the_child(payloads):
    """A SyntaxWarning must reach the module's stderr, as in a cold run: code that warned is not kept."""
    parent, _text, _zip_data = _prepared(payloads["ping"])
    sources = parent.sources
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("ansible/module_utils/quiet_one.py", "QUIET = 1\n")
        out.writestr("ansible/module_utils/loud_one.py", "LOUD = 1 is 1\n")
    sources.learn("a token", base64.b64encode(archive.getvalue()).decode())
    assert hashlib.sha256(b"QUIET = 1\n").digest() in sources.codes
    assert hashlib.sha256(b"LOUD = 1 is 1\n").digest() not in sources.codes


@ASYNC
async def test_stopping_a_parent_ends_a_send_it_does_not_read(payloads):
    """A frame waiting for a parent that reads nothing more ends (the socket refuses it) once the parent is stopped."""
    recognised = warm.recognise(_req(), payloads["ping"], warm.load_allowlist())
    assert isinstance(recognised, warm.Recognised)
    parent = warm._Parent("key", recognised, None)  # pylint: disable=protected-access
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    parent.sock = ours
    sending = asyncio.ensure_future(parent._send({"op": "run"}, b"x" * (8 << 20), []))  # pylint: disable=protected-access
    await asyncio.sleep(0.2)
    assert not sending.done()  # more than the socket holds
    await asyncio.wait_for(parent.stop(), 5)
    done, _pending = await asyncio.wait([sending], timeout=5)  # (the send cannot be cancelled once begun)
    theirs.close()
    assert done, "the send still waits on a stopped parent"
    with pytest.raises(OSError):
        sending.result()
