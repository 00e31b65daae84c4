# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A playbook through natsops.fleet.nats against an executor started with --warm: the results are right and the
executor's stats show the module runs it served warm."""

from __future__ import annotations

import os
import signal
import time

import pytest

import devenv
from conftest import executor_load

INSTANCE = "e2e-warm"


@pytest.fixture(scope="module")
def warm_executor(nats_server, tmp_path_factory):
    proc = devenv.ExecutorProcess(nats_server.url, [INSTANCE], extra_args=["--warm", "--log-level", "DEBUG"],
                                  log_dir=str(tmp_path_factory.mktemp("warm-logs")))
    yield proc
    proc.stop()


def test_a_playbook_runs_warm(playbook, nats_server, warm_executor, tmp_path):
    work = tmp_path / "work"
    playbook.run("warm.yml", host=INSTANCE, extra_vars={"work": str(work)})
    assert (work / "copy-3.txt").read_text() == "warm 3\n"
    load = executor_load(nats_server.url, INSTANCE)
    # the first module run starts the warm parent (cold, warming_up); the others are served warm
    assert load["warm_hits"] >= 8, (load, warm_executor.output()[-5000:])
    assert load["warm_cold_reasons"].get("warming_up", 0) >= 1
    assert "warm parent" in warm_executor.output()


def test_warm_runs_are_the_default_and_no_warm_turns_them_off(nats_server, executor, playbook, tmp_path):
    assert _discovered(nats_server, "e2e-host")["warm"] is True
    proc = devenv.ExecutorProcess(nats_server.url, [INSTANCE + "-cold"], extra_args=["--no-warm"], log_dir=str(tmp_path))
    try:
        playbook.run("warm.yml", host=INSTANCE + "-cold", extra_vars={"work": str(tmp_path / "work")})
        record = _discovered(nats_server, INSTANCE + "-cold")
        assert record["warm"] is False and "warm_hits" not in record["load"]
        assert not _warm_parents_of(proc.proc.pid)
    finally:
        proc.stop()


def _discovered(nats_server, instance):
    from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # pylint: disable=import-outside-toplevel
    client = ExecutorClient({"servers": nats_server.url}, instance).connect()
    try:
        return [r for r in client.discover(stats=True) if instance in r["instances"]][0]
    finally:
        client.close()


def _warm_parents_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"_natsops_warm_parent" in cmdline:
            found.append(int(entry))
    return found


def _gone(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def test_warm_parents_die_with_a_killed_executor(playbook, nats_server, tmp_path):
    proc = devenv.ExecutorProcess(nats_server.url, [INSTANCE + "-kill"], extra_args=["--warm"],
                                  log_dir=str(tmp_path))
    try:
        playbook.run("warm.yml", host=INSTANCE + "-kill", extra_vars={"work": str(tmp_path / "work")})
        parents = _warm_parents_of(proc.proc.pid)
        assert len(parents) == 1, proc.output()[-3000:]
    finally:
        proc.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _gone(parents[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(parents[0])


OVERRIDE_PLAY = """
- name: A playbook-local module_utils override
  hosts: all
  gather_facts: false
  tasks:
    - name: Warm the executor's parent with the builtin module_utils
      ansible.builtin.ping:
      loop: [1, 2]

    - name: A boolean only the overriding convert_bool accepts
      ansible.builtin.file:
        path: "{{ work }}/override.txt"
        state: touch
        follow: natsops-yes
"""


def test_a_playbook_local_module_utils_override_runs_cold_with_the_override(playbook, nats_server, warm_executor, tmp_path):
    import ansible  # pylint: disable=import-outside-toplevel
    play = tmp_path / "override"
    original = os.path.join(os.path.dirname(ansible.__file__), "module_utils", "parsing", "convert_bool.py")
    with open(original, encoding="utf-8") as handle:
        source = handle.read()
    assert "BOOLEANS_TRUE = frozenset((" in source
    override = play / "module_utils" / "parsing"
    override.mkdir(parents=True)
    (override / "convert_bool.py").write_text(
        source.replace("BOOLEANS_TRUE = frozenset((", "BOOLEANS_TRUE = frozenset(('natsops-yes', "), encoding="utf-8")
    (play / "override.yml").write_text(OVERRIDE_PLAY, encoding="utf-8")
    before = executor_load(nats_server.url, INSTANCE)["warm_cold_reasons"].get("module_utils_differ", 0)
    playbook.run(str(play / "override.yml"), host=INSTANCE, extra_vars={"work": str(tmp_path)})
    # the module saw the override (a warm run from the parent's builtin module_utils would refuse the value) ...
    assert (tmp_path / "override.txt").exists()
    # ... because the executor ran it cold: its payload's module_utils differ from what the warm parent imported
    after = executor_load(nats_server.url, INSTANCE)["warm_cold_reasons"].get("module_utils_differ", 0)
    assert after > before
