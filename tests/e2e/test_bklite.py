# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops-executor --bklite-compat driven by a BK-Lite server client written from the brief.

The SSH subjects against real sshd hosts are in tests/lab/test_bklite.py; here: every subject
on a real nats-server + JetStream, the envelope and reply fields, and what we do better.
"""

import asyncio
import hashlib
import json
import os
import re
import time
import zipfile

import nats
import pytest

import devenv
from bklite_client import BkliteCallFailed, BkliteServerClient

ZONE = "管理网"
BUCKET = "bklite"


@pytest.fixture
def client(nats_server, compat):  # pylint: disable=unused-argument
    return BkliteServerClient(nats_server.url, ZONE)


async def _put_object(url, key, data):
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            store = await js.object_store(BUCKET)
        except Exception:  # pylint: disable=broad-except
            store = await js.create_object_store(BUCKET)
        await store.put(key, data)
    finally:
        await nc.close()


def test_health_check_reply_fields(client):
    reply = client.health_check(raw=True)
    assert set(reply) == {"success", "status", "instance_id", "timestamp"}
    assert reply["success"] is True and reply["status"] == "ok" and reply["instance_id"] == ZONE
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", reply["timestamp"])


def test_local_execute_success_and_failure(client):
    reply = client.execute_local("printf 'out\\n'; printf 'err\\n' >&2", raw=True)
    assert reply == {"result": "out\nerr\n", "instance_id": ZONE, "success": True, "exit_code": 0}
    with pytest.raises(BkliteCallFailed) as failed:
        client.execute_local("echo partial; exit 7")
    reply = failed.value.reply
    assert reply["success"] is False and reply["code"] == "execution_failure"
    assert reply["error"] == "Command execution failed with exit code 7: exit status 7"
    assert reply["result"] == "partial\n" and reply["exit_code"] == 7
    assert str(failed.value) == "Command execution failed with exit code 7: exit status 7 | Output: partial\n"


def test_local_execute_shell_env_and_unicode(client):
    assert client.execute_local("echo ${BASH_VERSION:+bash} $ZONE_NAME", shell="bash", env={"ZONE_NAME": ZONE}) == "bash %s\n" % ZONE
    failed = client.execute_local("true", shell="fish", raw=True)
    assert (failed["code"], failed["error"]) == ("invalid_request", "unsupported shell: fish")
    failed = client.execute_local("echo hi", shell="pwsh", raw=True)
    assert failed["code"] == "execution_failure" and failed["error"].startswith("failed to start command:")


def test_invalid_requests_get_bklite_errors(client):
    def code_and_error(reply):
        return reply["code"], reply["error"], reply["result"], reply["success"]
    assert code_and_error(client.call("local.execute", None, 5, raw=True, body=b"{nope")) == (
        "invalid_request", "invalid request payload", "invalid request payload", False)
    assert code_and_error(client.call("local.execute", None, 5, raw=True, body=b'{"args": [], "kwargs": {}}'))[:2] == (
        "invalid_request", "missing request arguments")
    assert code_and_error(client.call("unzip.local", None, 5, raw=True, body=b'{"args": []}'))[:2] == (
        "invalid_request", "invalid request payload")
    assert code_and_error(client.call("local.execute", {"command": " ", "execute_timeout": 5}, 5, raw=True))[:2] == (
        "invalid_request", "command is required")
    assert code_and_error(client.call("local.execute", {"command": "true", "execute_timeout": 0}, 5, raw=True))[:2] == (
        "invalid_request", "execute timeout must be greater than 0")
    # Go decodes by type: a string port fails the whole request
    reply = client.call("ssh.execute", {"command": "true", "host": "h", "user": "u", "port": "22", "execute_timeout": 5},
                        5, raw=True)
    assert reply["error"] == "invalid request payload"
    # and the executor is still serving
    assert client.execute_local("echo alive") == "alive\n"


def test_timeout_kills_the_process_group_and_keeps_partial_output(client, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    started = time.monotonic()
    reply = client.execute_local("echo before; sleep 300 & echo $! > %s; wait" % pidfile, timeout=2, raw=True)
    assert time.monotonic() - started < 10
    assert reply["code"] == "timeout" and reply["success"] is False
    assert re.match(r"^Command timed out after [0-9.]+s \(timeout: 2s\)$", reply["error"])
    assert reply["result"] == "before\n"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists("/proc/%d" % pid), "the backgrounded sleep survived the timeout"


def test_output_is_capped_with_the_marker(client):
    result = client.execute_local("head -c 1500000 /dev/zero | tr '\\0' x; echo tail >&2")
    # BK-Lite's cap is 1 MiB; the reply must also fit the server's max_payload (1 MiB here), so a little less
    assert 1024 * 1024 - 4096 < len(result.encode()) <= 1024 * 1024
    assert result.endswith("\n...[output truncated]") and set(result[:-22]) == {"x"}


def test_stream_logs_publish_each_line(nats_server, client):
    lines = []

    async def run():
        nc = await nats.connect(nats_server.url)
        sub = await nc.subscribe("job.stream.e2e-1.host")
        await nc.flush()
        reply = await asyncio.get_running_loop().run_in_executor(None, lambda: client.execute_local(
            "echo one; echo; echo two >&2; printf three", stream_logs=True, stream_log_topic="job.stream.e2e-1.host",
            execution_id="e2e-1"))
        deadline = time.monotonic() + 5
        while len(lines) < 3 and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                continue
            lines.append(json.loads(msg.data))
        await nc.close()
        return reply

    assert asyncio.run(run()) == "one\n\nthree" + "two\n"  # stdout, then stderr
    assert sorted((e["stream"], e["line"]) for e in lines) == [("stderr", "two"), ("stdout", "one"), ("stdout", "three")]
    assert all(e["execution_id"] == "e2e-1" and re.match(r"^\d{4}-.*Z$", e["timestamp"]) for e in lines)


def test_download_local_from_the_object_store(nats_server, client, tmp_path):
    data = os.urandom(700 * 1024)
    asyncio.run(_put_object(nats_server.url, "linux/x86_64/agent/1.0/agent.bin", data))
    result = client.download_to_local(BUCKET, "linux/x86_64/agent/1.0/agent.bin", "agent.bin", str(tmp_path))
    assert result == "File successfully downloaded to %s/agent.bin" % tmp_path
    assert hashlib.sha256((tmp_path / "agent.bin").read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert os.listdir(str(tmp_path)) == ["agent.bin"]  # no temp file left

    missing = client.download_to_local(BUCKET, "no/such/key", "x.bin", str(tmp_path), raw=True)
    assert missing["code"] == "dependency_failure" and "object not found" in missing["error"]
    nobucket = client.download_to_local("nosuchbucket", "k", "x.bin", str(tmp_path), raw=True)
    assert nobucket["code"] == "dependency_failure" and "bucket not found" in nobucket["error"]
    sneaky = client.download_to_local(BUCKET, "linux/x86_64/agent/1.0/agent.bin", "../agent.bin", str(tmp_path), raw=True)
    assert sneaky["error"] == "Failed to download file: file_name must not contain path separators or be absolute"
    assert sorted(os.listdir(str(tmp_path))) == ["agent.bin"]


def _zip(path, entries):
    with zipfile.ZipFile(str(path), "w") as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, data)


def test_unzip_local(client, tmp_path):
    good = tmp_path / "good.zip"
    _zip(good, [("pkg/", b"", 0o40755), ("pkg/bin/run.sh", b"#!/bin/sh\necho ok\n", 0o100755),
                ("pkg/README", "说明".encode(), 0o100644)])
    out = tmp_path / "out"
    assert client.unzip_local(str(good), str(out)) == "pkg"
    assert (out / "pkg" / "bin" / "run.sh").read_bytes() == b"#!/bin/sh\necho ok\n"
    assert os.stat(str(out / "pkg" / "bin" / "run.sh")).st_mode & 0o777 == 0o755

    # zip-slip and links are refused before anything is written (BK-Lite writes the entries before the bad one)
    for name, entries in (("slip", [("ok.txt", b"x", 0o100644), ("../evil.txt", b"x", 0o100644)]),
                          ("link", [("ok.txt", b"x", 0o100644), ("ln", b"/etc/passwd", 0o120777)])):
        archive = tmp_path / (name + ".zip")
        _zip(archive, entries)
        dest = tmp_path / ("dest-" + name)
        reply = client.unzip_local(str(archive), str(dest), raw=True)
        assert reply["code"] == "execution_failure" and reply["error"].startswith("Failed to unzip file: ")
        assert not dest.exists() or os.listdir(str(dest)) == []
        assert not (tmp_path / "evil.txt").exists()
    assert "illegal file path" in client.unzip_local(str(tmp_path / "slip.zip"), str(tmp_path / "d"), raw=True)["error"]
    assert "unsupported file type" in client.unzip_local(str(tmp_path / "link.zip"), str(tmp_path / "d"), raw=True)["error"]


def test_ssh_execute_failures_name_stage_and_category(client):
    port = devenv.free_port()  # nothing listens there
    reply = client.execute_ssh("true", "127.0.0.1", "root", port=port, timeout=5, password="s3cret-never-logged", raw=True)
    assert (reply["code"], reply["stage"], reply["category"]) == ("dependency_failure", "ssh_dial", "network")
    assert reply["error"].startswith("Failed to create SSH client:")
    reply = client.execute_ssh("true", "127.0.0.1", "root", port=port, timeout=5, password="s3cret-never-logged",
                               connection_test=True, raw=True)
    assert (reply["code"], reply["stage"], reply["category"]) == ("dependency_failure", "tcp_connect", "network")
    reply = client.execute_ssh("true", "127.0.0.1", "root", port=port, timeout=5, private_key="not a key", raw=True)
    assert reply["code"] == "invalid_request" and reply["error"].startswith("Failed to parse private key:")
    assert "s3cret-never-logged" not in json.dumps(reply)


def test_executors_sharing_an_instance_id_run_a_request_once(nats_server, compat, tmp_path):  # pylint: disable=unused-argument
    twin = devenv.ExecutorProcess(nats_server.url, ["bk-shared"], extra_args=["--bklite-compat"], log_dir=str(tmp_path))
    try:
        shared = BkliteServerClient(nats_server.url, "bk-shared")
        marker = tmp_path / "ran"
        for _round in range(6):
            shared.execute_local("echo x >> %s" % marker)
        assert marker.read_text() == "x\n" * 6  # BK-Lite's own executors would each run it: 12 lines
    finally:
        twin.stop()


def test_discovery_lists_the_compat_subjects(nats_server, compat):  # pylint: disable=unused-argument
    from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # pylint: disable=import-outside-toplevel
    client = ExecutorClient({"servers": nats_server.url}, ZONE).connect()
    try:
        records = [r for r in client.discover() if ZONE in r["instances"]]
    finally:
        client.close()
    assert records and records[0]["bklite"] is True
    assert "ssh.execute.%s" % ZONE in records[0]["subjects"] and "health.check.%s" % ZONE in records[0]["subjects"]


def test_secrets_never_reach_the_log(compat):
    log = compat.output()
    assert "s3cret-never-logged" not in log
    assert "serving local.execute.%s (BK-Lite compat" % ZONE in log


def test_executor_info_health_checks_bklite_executors(local_play, tmp_path, compat):  # pylint: disable=unused-argument
    out = tmp_path / "info.json"
    run = local_play([
        {"name": "health", "natsops.fleet.executor_info": {"protocol": "bklite", "instance_id": ZONE}, "register": "info"},
        {"name": "keep", "ansible.builtin.copy": {"content": "{{ info | to_json }}", "dest": str(out)}},
        {"name": "nobody", "natsops.fleet.executor_info": {"protocol": "bklite", "instance_id": "业务网"}, "register": "nobody"},
        {"name": "check", "ansible.builtin.assert": {"that": ["nobody.executors == []"]}}])
    assert run.returncode == 0, run.stdout[-3000:]
    info = json.loads(out.read_text())
    assert [(e["instance_id"], e["status"], e["protocol"]) for e in info["executors"]] == [(ZONE, "ok", "bklite")]


def test_executor_command_bklite_protocol_reports_rc_and_unreachable(local_play, compat):  # pylint: disable=unused-argument
    run = local_play([
        {"name": "rc", "natsops.fleet.executor_command": {"executor": ZONE, "protocol": "bklite", "cmd": "echo hi; exit 4",
                                                          "env": {"A": "1"}, "chdir": "/tmp"},
         "register": "bad", "ignore_errors": True},
        {"name": "check rc", "ansible.builtin.assert": {"that": ["bad.rc == 4", "bad.stdout == 'hi\\n'"]}},
        {"name": "creates", "natsops.fleet.executor_command": {"executor": ZONE, "protocol": "bklite", "cmd": "false",
                                                               "creates": "/tmp"}, "register": "skip"},
        {"name": "check skip", "ansible.builtin.assert": {"that": ["skip is not changed"]}},
        {"name": "nobody", "natsops.fleet.executor_command": {"executor": "业务网", "protocol": "bklite", "cmd": "true"}}])
    assert run.returncode != 0
    assert "ok=4" in run.stdout, run.stdout[-3000:]
    assert "no executor subscribes to 'local.execute.业务网'" in run.stdout and "'管理网'" in run.stdout
