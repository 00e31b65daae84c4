# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.executor_command against a real nats-server and executor (agent mode)."""

from __future__ import annotations


def _run(local_play, tasks, check=False):
    # the action group sets the connection for every natsops module at once
    return local_play(tasks, check=check, defaults={"natsops.fleet.executor_command": {"executor": "e2e-host"}})


def test_command_output_rc_and_env(local_play):
    result = _run(local_play, [
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


def test_creates_removes_and_check_mode(local_play, tmp_path):
    marker = tmp_path / "made-by-executor"
    task = {"name": "make", "natsops.fleet.executor_command": {"cmd": "touch %s" % marker, "creates": str(marker)},
            "register": "made"}
    checked = _run(local_play, [task], check=True)
    assert checked.returncode == 0 and "changed=1" in checked.stdout, checked.stdout
    assert not marker.exists()  # check mode ran nothing
    first = _run(local_play, [task])
    assert first.returncode == 0 and "changed=1" in first.stdout and marker.exists(), first.stdout
    second = _run(local_play, [task])
    assert second.returncode == 0 and "changed=0" in second.stdout and "skipped, since" in second.stdout
    removes = _run(local_play, [{"name": "gone", "natsops.fleet.executor_command": {
        "cmd": "false", "removes": str(tmp_path / "absent")}}])
    assert removes.returncode == 0 and "changed=0" in removes.stdout


def test_action_group_sets_the_connection_for_executor_info(local_play):
    result = _run(local_play, [
        {"name": "info", "natsops.fleet.executor_info": {"instance_id": "e2e-host"}, "register": "info"},
        {"name": "check", "ansible.builtin.assert": {"that": ["info.executors | length == 1"]}}])
    assert result.returncode == 0, result.stdout[-3000:]


def test_nobody_serving_is_reported_with_the_fix(local_play):
    result = _run(local_play, [{"name": "seed", "natsops.fleet.executor_command": {
        "cmd": "true", "executor": "业务网"}}])
    assert result.returncode != 0
    assert "no executor serves instance id '业务网'" in result.stdout and "'e2e-host'" in result.stdout, result.stdout


def test_output_lines_stream_to_a_subject(local_play, nats_server, compat):  # pylint: disable=unused-argument
    import asyncio  # pylint: disable=import-outside-toplevel
    import json  # pylint: disable=import-outside-toplevel
    import nats  # pylint: disable=import-outside-toplevel

    async def watch_while(run):
        nc = await nats.connect(nats_server.url)
        sub = await nc.subscribe("job.stream.>")
        await nc.flush()
        done = await asyncio.get_running_loop().run_in_executor(None, run)
        events = []
        while True:
            try:
                events.append(json.loads((await sub.next_msg(timeout=1)).data))
            except nats.errors.TimeoutError:
                break
        await nc.close()
        return done, events

    for protocol, executor in (("natsops", "e2e-host"), ("bklite", "bk-shared")):
        task = {"name": "stream", "natsops.fleet.executor_command": {
            "cmd": "echo one; echo two >&2; printf 'three'", "stream_topic": "job.stream.%s" % protocol,
            "execution_id": "run-%s" % protocol, "protocol": protocol, "executor": executor}}
        done, events = asyncio.run(watch_while(lambda t=task: local_play([t])))
        assert done.returncode == 0, done.stdout[-3000:]
        assert sorted((e["stream"], e["line"]) for e in events) == [
            ("stderr", "two"), ("stdout", "one"), ("stdout", "three")], (protocol, events)
        assert all(e["execution_id"] == "run-%s" % protocol for e in events)
