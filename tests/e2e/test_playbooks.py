# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-playbook and ad-hoc ansible through natsops.fleet.nats, against a real executor."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time

import pytest

import devenv
from conftest import E2E_WARM, PLAYBOOKS, executor_load


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.bin"
    with open(path, "wb") as handle:
        handle.write(os.urandom(50 * 1024 * 1024))
    return str(path)


# pipelined module runs are warm by default (the executor's default too); ansible_nats_warm: false opts out; copied
# modules (pipelining off) are never run warm
RUNS = {"pipelined-warm": {"ansible_nats_warm": True}, "pipelined-cold": {"ansible_nats_warm": False}, "copied": {"ansible_nats_pipelining": False}}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_builtin_modules(playbook, nats_server, big_file, tmp_path, run):
    work = tmp_path / "work"
    before = executor_load(nats_server.url)
    playbook.run("modules.yml", hostvars=RUNS[run], extra_vars={"work": str(work), "big_file": big_file})
    after = executor_load(nats_server.url)
    warm_runs = after["warm_hits"] - before["warm_hits"]
    opted_out = after["warm_cold_reasons"].get("caller_opt_out", 0) - before["warm_cold_reasons"].get("caller_opt_out", 0)
    if run == "pipelined-warm":
        assert warm_runs >= 20 and opted_out == 0, (before, after)
    else:
        # every command of an opted-out host counts as the caller's choice (make e2e-cold opts every host out)
        assert warm_runs == 0 and (opted_out >= 20) == (run == "pipelined-cold" or not E2E_WARM), (before, after)
    # real outcomes on the host (the executor runs on this machine)
    assert sha256(work / "big.bin") == sha256(big_file)
    assert oct(os.stat(work / "big.bin").st_mode & 0o777) == "0o600"
    assert sha256(str(work) + "-fetched/big.bin") == sha256(big_file)
    assert (work / "tree" / "a.txt").read_text() == "alpha\n"
    assert (work / "tree" / "sub" / "b.txt").read_text(encoding="utf-8") == "beta ✓\n"
    settings = (work / "settings.conf").read_text(encoding="utf-8")
    assert "name=e2e-host" in settings and "greeting=changed" in settings
    assert oct(os.stat(work / "settings.conf").st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in work.glob("loop-*.txt")) == sorted("loop-%d.txt" % i for i in range(20))
    assert (work / "loop-13.txt").read_text() == "item 13\n"
    assert (work / "async.txt").read_text() == "async-done\n"
    # nothing half-written was left behind
    assert not list(work.rglob("*.natsops-*.tmp"))


def test_second_run_changes_nothing_for_idempotent_tasks(playbook, tmp_path):
    work = tmp_path / "idem"
    first = playbook.run("idempotent.yml", extra_vars={"work": str(work)})
    second = playbook.run("idempotent.yml", extra_vars={"work": str(work)})
    assert "changed=3" in first.stdout
    assert "changed=0" in second.stdout


def test_adhoc_ping(playbook):
    inventory = playbook.inventory()
    result = subprocess.run([devenv.tool("ansible"), "-i", inventory, "e2e-host", "-m", "ansible.builtin.ping",
                             "-c", "natsops.fleet.nats"], env=devenv.ansible_env(), capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"ping": "pong"' in result.stdout


@pytest.mark.parametrize("wait", [0, 2])
def test_seed_incident_names_subject_and_online_instances(playbook, wait):
    """The executor serves 'default'; the host addresses '管理网': the error explains and says how to fix, at once
    with executor_wait 0, after waiting for an executor to come otherwise."""
    inventory = playbook.inventory({"ansible_nats_executor": "管理网", "ansible_nats_executor_wait": wait},
                                   host="probe-target")
    started = time.monotonic()
    result = subprocess.run([devenv.tool("ansible"), "-i", inventory, "probe-target", "-m", "ansible.builtin.ping"],
                            env=devenv.ansible_env(), capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "UNREACHABLE" in output
    assert "natsops.exec.管理网" in output            # the subject
    assert "'管理网'" in output                        # the instance id asked for
    assert "'default'" in output and "'e2e-host'" in output  # the instance ids online
    assert "Fix:" in output and "ansible_nats_executor" in output
    assert "no responders available" not in output
    elapsed = time.monotonic() - started
    assert elapsed < 20 and (elapsed >= wait) and (("waited %d s" % wait) in output) == bool(wait), output


def test_bad_instance_id_is_refused_before_sending(playbook):
    inventory = playbook.inventory({"ansible_nats_executor": "{{ zone }}x"}, host="templated")
    result = subprocess.run([devenv.tool("ansible"), "-i", inventory, "templated", "-m", "ansible.builtin.ping",
                             "-e", "zone='${ZONE}'"], env=devenv.ansible_env(), capture_output=True, text=True,
                            timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "unrendered variable" in output, output


def test_executor_killed_mid_task_is_unreachable_within_seconds(nats_server, tmp_path):
    victim = devenv.ExecutorProcess(nats_server.url, ["victim"], log_dir=str(tmp_path))
    book = __import__("conftest").Playbook(nats_server.url, tmp_path)
    inventory = book.inventory(host="victim")
    killed_at = []

    def kill_later():
        time.sleep(3)
        killed_at.append(time.monotonic())
        os.kill(victim.proc.pid, signal.SIGKILL)

    timer = threading.Thread(target=kill_later)
    timer.start()
    try:
        result = subprocess.run([devenv.tool("ansible-playbook"), "-i", inventory, os.path.join(PLAYBOOKS, "sleep.yml")],
                                env=devenv.ansible_env(), capture_output=True, text=True, timeout=120, check=False)
        ended = time.monotonic()
    finally:
        timer.join()
        victim.stop()
    output = result.stdout + result.stderr
    assert "UNREACHABLE" in output, output
    assert "stopped answering" in output, output
    assert ended - killed_at[0] < 10, "noticed after %.1f s" % (ended - killed_at[0])


def _control_processes(socket_path):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    argv = handle.read().split(b"\0")
            except OSError:
                continue
            if socket_path.encode() in argv and b"ansible_collections.natsops.fleet.plugins.plugin_utils._control" in argv:
                found.append(int(pid))
    return found


def test_control_process_is_reused_then_exits_when_idle(playbook, nats_server, tmp_path):
    from ansible_collections.natsops.fleet.plugins.plugin_utils import _mux as mux  # pylint: disable=import-outside-toplevel
    # the options the connection plugin passes: the servers, and the pinned executors' file (conftest.py sets it)
    path = mux.control_path({"servers": [nats_server.url], "known_executors": os.environ["NATSOPS_KNOWN_EXECUTORS"]},
                            10.0, 3)
    hostvars = {"ansible_nats_control_persist": 3}
    playbook.run("idempotent.yml", hostvars=hostvars, extra_vars={"work": str(tmp_path / "a")})
    first = _control_processes(path)
    assert len(first) == 1, "one control process serves all workers"
    playbook.run("idempotent.yml", hostvars=hostvars, extra_vars={"work": str(tmp_path / "b")})
    assert _control_processes(path) == first, "the second run reuses it"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _control_processes(path):
        time.sleep(0.5)
    assert not _control_processes(path), "it exits after control_persist seconds without work"
    assert not os.path.exists(path), "and removes its socket"


def test_without_control_process(playbook, tmp_path):
    result = playbook.run("idempotent.yml", hostvars={"ansible_nats_control_persist": 0},
                          extra_vars={"work": str(tmp_path / "direct")})
    assert "changed=3" in result.stdout
