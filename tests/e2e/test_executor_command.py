# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.executor_command against a real nats-server and executor (agent mode)."""

from __future__ import annotations

import json
import subprocess

import devenv


def _run(nats_server, tmp_path, tasks, check=False):
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{
        "name": "executor_command", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": devenv.tool("python")},
        # the action group sets the connection for every natsops module at once
        "module_defaults": {"group/natsops.fleet.nats": {"servers": nats_server.url},
                            "natsops.fleet.executor_command": {"executor": "e2e-host"}},
        "tasks": tasks}], ensure_ascii=False))
    cmd = [devenv.tool("ansible-playbook"), "-i", "localhost,", str(playbook), "-v"] + (["--check"] if check else [])
    return subprocess.run(cmd, env=devenv.ansible_env(), capture_output=True, text=True, timeout=300, check=False)


def test_command_output_rc_and_env(nats_server, executor, tmp_path):
    result = _run(nats_server, tmp_path, [
        {"name": "run", "natsops.fleet.executor_command": {"cmd": "echo \"$GREETING\"; echo err >&2; pwd",
                                                           "env": {"GREETING": "管理网 ok"}, "chdir": "/tmp"},
         "register": "out"},
        {"name": "check", "ansible.builtin.assert": {"that": [
            "out.rc == 0", "out.stdout_lines == ['管理网 ok', '/tmp']", "out.stderr == 'err\\n'", "out is changed"]}},
        {"name": "argv and stdin", "natsops.fleet.executor_command": {"argv": ["cat"], "stdin": "from stdin"},
         "register": "cat"},
        {"name": "check cat", "ansible.builtin.assert": {"that": ["cat.stdout == 'from stdin'"]}},
        {"name": "failing", "natsops.fleet.executor_command": {"cmd": "exit 3"}, "register": "bad", "ignore_errors": True},
        {"name": "check failing", "ansible.builtin.assert": {"that": ["bad is failed", "bad.rc == 3"]}},
    ])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_creates_removes_and_check_mode(nats_server, executor, tmp_path):
    marker = tmp_path / "made-by-executor"
    task = {"name": "make", "natsops.fleet.executor_command": {"cmd": "touch %s" % marker, "creates": str(marker)},
            "register": "made"}
    checked = _run(nats_server, tmp_path, [task], check=True)
    assert checked.returncode == 0 and "changed=1" in checked.stdout, checked.stdout
    assert not marker.exists()  # check mode ran nothing
    first = _run(nats_server, tmp_path, [task])
    assert first.returncode == 0 and "changed=1" in first.stdout and marker.exists(), first.stdout
    second = _run(nats_server, tmp_path, [task])
    assert second.returncode == 0 and "changed=0" in second.stdout and "skipped, since" in second.stdout
    removes = _run(nats_server, tmp_path, [{"name": "gone", "natsops.fleet.executor_command": {
        "cmd": "false", "removes": str(tmp_path / "absent")}}])
    assert removes.returncode == 0 and "changed=0" in removes.stdout


def test_action_group_sets_the_connection_for_executor_info(nats_server, executor, tmp_path):
    result = _run(nats_server, tmp_path, [
        {"name": "info", "natsops.fleet.executor_info": {"instance_id": "e2e-host"}, "register": "info"},
        {"name": "check", "ansible.builtin.assert": {"that": ["info.executors | length == 1"]}}])
    assert result.returncode == 0, result.stdout[-3000:]


def test_nobody_serving_is_reported_with_the_fix(nats_server, executor, tmp_path):
    result = _run(nats_server, tmp_path, [{"name": "seed", "natsops.fleet.executor_command": {
        "cmd": "true", "executor": "管理网"}}])
    assert result.returncode != 0
    assert "no executor serves instance id '管理网'" in result.stdout and "'e2e-host'" in result.stdout, result.stdout
