# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The executor against real NATS: load sharing, robustness against bad input, timeouts, config errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time

import nats
import pytest

import devenv
from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorTaskError, ExecutorUnreachable
from ansible_collections.natsops.fleet.plugins.module_utils.wire import contract


def _request_doc(op, reply_to, **fields):
    doc = {"v": contract.PROTOCOL_VERSION, "op": op, "id": os.urandom(8).hex(), "reply_to": reply_to}
    doc.update(fields)
    return doc


async def _raw_request(url, subj, body, headers=None, timeout=5):
    nc = await nats.connect(url)
    try:
        msg = await nc.request(subj, body, timeout=timeout, headers=headers or {contract.H_KIND: contract.KIND_REQUEST})
        return msg.headers or {}, json.loads(msg.data)
    finally:
        await nc.close()


def test_shared_instance_id_runs_each_request_once_and_shares_load(nats_server, client_factory, tmp_path):
    first = devenv.ExecutorProcess(nats_server.url, ["shared"], log_dir=str(tmp_path))
    second = devenv.ExecutorProcess(nats_server.url, ["shared"], log_dir=str(tmp_path))
    ledger = tmp_path / "ledger.txt"
    try:
        client = client_factory("shared")
        owners = []
        for i in range(40):
            rc, out, _err = client.exec_command("echo %d >> %s; echo $PPID" % (i, ledger))
            assert rc == 0
            owners.append(int(out.strip()))
    finally:
        first.stop()
        second.stop()
    lines = ledger.read_text().split()
    assert sorted(int(x) for x in lines) == list(range(40)), "every request ran exactly once"
    assert set(owners) == {first.proc.pid, second.proc.pid}, "both executors took requests"


def test_wildcard_executor_and_specific_executor_still_run_once(nats_server, client_factory, tmp_path):
    star = devenv.ExecutorProcess(nats_server.url, ["*"], log_dir=str(tmp_path))
    specific = devenv.ExecutorProcess(nats_server.url, ["zone-x"], log_dir=str(tmp_path))
    ledger = tmp_path / "ledger.txt"
    try:
        client = client_factory("zone-x")
        for i in range(20):
            assert client.exec_command("echo %d >> %s" % (i, ledger))[0] == 0
        # an executor serving '*' answers any instance id
        assert client_factory("anything-else").exec_command("echo star")[1] == b"star\n"
    finally:
        star.stop()
        specific.stop()
    assert sorted(int(x) for x in ledger.read_text().split()) == list(range(20))


def test_exec_is_byte_exact_with_separate_streams(client_factory):
    client = client_factory()
    blob = bytes(range(256)) * 4096  # 1 MiB of every byte value, more than one chunk
    rc, out, err = client.exec_command("cat; printf 'e\\0rr' >&2; exit 3", stdin=blob)
    assert rc == 3
    assert out == blob
    assert err == b"e\x00rr"


def test_large_stdin_goes_through_the_upload_stream(client_factory):
    client = client_factory()
    blob = os.urandom(3 * 1024 * 1024)
    rc, out, _err = client.exec_command("sha256sum | cut -d' ' -f1", stdin=blob)
    assert rc == 0
    assert out.strip().decode() == hashlib.sha256(blob).hexdigest()


def test_timeout_kills_the_whole_process_group(client_factory, tmp_path):
    client = client_factory()
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(ExecutorTaskError) as info:
        client.exec_command("sleep 300 & echo $! > %s; wait" % pidfile, timeout=1)
    assert info.value.code == contract.E_TIMEOUT
    assert "process group" in info.value.message and "killed" in info.value.message
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and os.path.exists("/proc/%d" % child):
        time.sleep(0.1)
    assert not os.path.exists("/proc/%d" % child), "the background child of the timed-out command still runs"


def test_missing_file_and_bad_paths_are_structured_errors(client_factory, tmp_path):
    client = client_factory()
    with pytest.raises(ExecutorTaskError) as info:
        client.fetch_file("/nonexistent/file", str(tmp_path / "x"))
    assert info.value.code == contract.E_NOT_FOUND
    assert not (tmp_path / "x").exists()
    with pytest.raises(ExecutorTaskError) as info:
        client.fetch_file("/etc/../etc/passwd", str(tmp_path / "y"))
    assert info.value.code == contract.E_BAD_REQUEST
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("body,code", [
    (b"{not json", contract.E_BAD_JSON),
    (b"[1, 2]", contract.E_BAD_JSON),
    (json.dumps({"v": 1, "op": "exec", "id": "x", "reply_to": "r", "command": 5}).encode(), contract.E_BAD_REQUEST),
    (json.dumps({"v": 1, "op": "exec", "id": "x", "reply_to": "r", "command": "true", "timeout": True}).encode(), contract.E_BAD_REQUEST),
    (json.dumps({"v": 1, "op": "exec", "id": "x"}).encode(), contract.E_BAD_REQUEST),
    (json.dumps({"v": 1, "op": "exec", "id": "x", "reply_to": "r", "command": "true", "bogus": 1}).encode(), contract.E_BAD_REQUEST),
    (json.dumps({"v": 99, "op": "exec", "id": "x", "reply_to": "r", "command": "true"}).encode(), contract.E_UNSUPPORTED_VERSION),
    ("{\"v\": 1, \"op\": \"exec\", \"id\": \"\udcff\"}".encode("utf-8", "surrogatepass"), contract.E_BAD_JSON),
])
def test_malformed_requests_get_structured_errors(nats_server, executor, client_factory, body, code):  # pylint: disable=unused-argument
    headers, reply = asyncio.run(_raw_request(nats_server.url, "natsops.exec.e2e-host", body))
    assert headers.get(contract.H_KIND) == contract.KIND_ERROR
    assert reply["code"] == code, reply
    assert reply["message"]
    # and the executor still serves
    assert client_factory().exec_command("echo alive")[1] == b"alive\n"


def test_oversize_request_is_refused(tmp_path):
    server = devenv.NatsServer(max_payload=16 * 1024 * 1024)
    proc = devenv.ExecutorProcess(server.url, ["big"], log_dir=str(tmp_path))
    try:
        body = json.dumps(_request_doc("exec", "_INBOX.x", command="true", env={"PAD": "x" * (10 * 1024 * 1024)})).encode()
        headers, reply = asyncio.run(_raw_request(server.url, "natsops.exec.big", body))
        assert headers.get(contract.H_KIND) == contract.KIND_ERROR
        assert reply["code"] == contract.E_TOO_LARGE
        assert proc.proc.poll() is None
    finally:
        proc.stop()
        server.stop()


async def _put_raw(url, path, payload, announced_sha, seq_order=None):
    """A put driven by hand: announces sha256, then sends chunks in the given sequence order."""
    nc = await nats.connect(url)
    events = asyncio.Queue()

    async def collect(msg):
        await events.put(msg)
        if msg.reply:
            await nc.publish(msg.reply, b"")

    try:
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=collect)
        doc = _request_doc("put", inbox, path=path, size=len(payload), sha256=announced_sha)
        headers, body = contract.pack(contract.KIND_REQUEST, doc)
        reply = await nc.request("natsops.put.e2e-host", body, headers=headers, timeout=5)
        accepted = json.loads(reply.data)
        chunks = [payload[i:i + 65536] for i in range(0, len(payload), 65536)]
        for seq in seq_order or range(1, len(chunks) + 1):
            headers, body = contract.pack(contract.KIND_DATA, None, chunks[seq - 1], seq=seq)
            await nc.publish(accepted["upload"], body, headers=headers)
        msg = await asyncio.wait_for(events.get(), 15)
        return contract.kind_of(msg.headers), json.loads(msg.data)
    finally:
        await nc.close()


def test_put_with_wrong_checksum_leaves_nothing(nats_server, executor, tmp_path):  # pylint: disable=unused-argument
    dest = tmp_path / "dest.bin"
    payload = os.urandom(300 * 1024)
    kind, doc = asyncio.run(_put_raw(nats_server.url, str(dest), payload, "0" * 64))
    assert kind == contract.KIND_ERROR and doc["code"] == contract.E_CHECKSUM_MISMATCH
    assert list(tmp_path.iterdir()) == [], "nothing may be left at the destination"


def test_put_with_a_missing_chunk_leaves_nothing(nats_server, executor, tmp_path):  # pylint: disable=unused-argument
    dest = tmp_path / "dest.bin"
    payload = os.urandom(300 * 1024)
    kind, doc = asyncio.run(_put_raw(nats_server.url, str(dest), payload, hashlib.sha256(payload).hexdigest(),
                                     seq_order=[1, 3, 4, 5]))
    assert kind == contract.KIND_ERROR and doc["code"] == contract.E_STREAM and "2 is missing" in doc["message"]
    assert list(tmp_path.iterdir()) == []


def test_put_with_chunks_out_of_order_lands_whole(nats_server, executor, tmp_path):  # pylint: disable=unused-argument
    """Chunks sent again after a reconnect arrive after later ones: they are put back in order."""
    dest = tmp_path / "dest.bin"
    payload = os.urandom(300 * 1024)
    kind, _doc = asyncio.run(_put_raw(nats_server.url, str(dest), payload, hashlib.sha256(payload).hexdigest(),
                                      seq_order=[1, 3, 2, 2, 4, 5]))
    assert kind == contract.KIND_RESULT and dest.read_bytes() == payload
    assert list(tmp_path.iterdir()) == [dest]


def test_put_then_fetch_large_file_round_trip(client_factory, tmp_path):
    client = client_factory()
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(20 * 1024 * 1024 + 17))
    os.chmod(src, 0o751)
    client.put_file(str(src), str(tmp_path / "put.bin"))
    assert (tmp_path / "put.bin").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "put.bin").st_mode & 0o7777 == 0o751
    client.fetch_file(str(tmp_path / "put.bin"), str(tmp_path / "fetched.bin"))
    assert (tmp_path / "fetched.bin").read_bytes() == src.read_bytes()


def test_discovery_lists_instances_host_version_and_load(executor, client_factory):  # pylint: disable=unused-argument
    client = client_factory()
    records = client.discover(stats=True)
    mine = [r for r in records if "e2e-host" in r["instances"]]
    assert len(mine) == 1
    record = mine[0]
    assert record["instances"] == ["e2e-host", "default"]
    assert record["hostname"] and record["version"] == "0.1.0" and record["protocol"] == "1"
    assert "natsops.exec.e2e-host" in record["subjects"]
    assert set(record["load"]) >= {"running", "max_jobs", "loadavg"}


def test_no_responders_for_unknown_instance(client_factory):
    with pytest.raises(ExecutorUnreachable) as info:
        client_factory("业务网").exec_command("true")
    assert info.value.code == contract.E_NO_RESPONDERS
    assert "natsops.exec.业务网" in info.value.message
    assert "'e2e-host'" in info.value.message


def _executor_cli(*args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([devenv.tool("natsops-executor")] + list(args), capture_output=True, text=True,
                          timeout=30, env=full_env, check=False)


@pytest.mark.parametrize("args,needle", [
    ([], "no instance id to serve"),
    (["--instance", ""], "instance id is empty"),
    (["--instance", "${NATS_INSTANCE_ID}"], "unrendered variable"),
    (["--instance", "{{ zone }}"], "unrendered variable"),
    (["--instance", "a.b"], "'.'"),
    (["--instance", "x", "--creds", "/nonexistent.creds"], "does not exist"),
    (["--instance", "x", "--user", "u"], "'password'"),
    (["--instance", "x", "--namespace", "bad ns"], "namespace"),
    (["--instance", "x", "--ssh-identity", "zone=/nonexistent/id_ed25519"], "ssh identity 'zone'"),
    (["--instance", "x", "--ssh-identity", "no-equals-sign"], "is not NAME=KEYFILE"),
    (["--instance", "x", "--ssh-pool-size", "0"], "ssh_pool_size"),
])
def test_bad_configuration_exits_nonzero_with_a_clear_message(args, needle):
    result = _executor_cli("--server", "nats://127.0.0.1:1", *args)
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr and needle in result.stderr, result.stderr


def test_config_file_and_environment(nats_server, tmp_path, client_factory):
    config = tmp_path / "executor.yml"
    config.write_text("servers: [%s]\ninstances: [from-file]\nmax_jobs: 4\n" % nats_server.url)
    proc = devenv.ExecutorProcess(nats_server.url, [], extra_args=["--config", str(config)], log_dir=str(tmp_path),
                                  env={"NATSOPS_NAMESPACE": "envns"})
    try:
        output = proc.output()
        assert "serving envns.exec.from-file" in output
        assert client_factory("from-file", namespace="envns").exec_command("echo ok")[1] == b"ok\n"
    finally:
        proc.stop()
    bad = tmp_path / "bad.yml"
    bad.write_text("instances: [x]\nmax-jobz: 3\n")
    result = _executor_cli("--config", str(bad))
    assert result.returncode == 2 and "unknown option(s) max_jobz" in result.stderr


def test_startup_logs_one_line_per_subject(executor):
    lines = [line for line in executor.output().splitlines() if " serving " in line]
    subjects = [line.split(" serving ")[1].split()[0] for line in lines]
    assert subjects == ["natsops.%s.%s" % (op, inst) for inst in ("e2e-host", "default") for op in contract.OPERATIONS]


@pytest.mark.parametrize("version, expected", [("0.1.0", "0.1.0"), ("0.1.0.post900", "0.1.0+post900"), ("1.2", "1.2.0"),
                                               ("2.0.0rc1", "2.0.0+rc1"), ("1.0.0.dev3+local.7", "1.0.0+dev3.local.7")])
def test_any_package_version_is_a_valid_micro_service_version(version, expected):
    """A PEP 440 version (a post release, a release candidate) once crashed the executor at start: NATS micro
    services accept only semantic versions."""
    from nats.micro.service import ServiceConfig  # pylint: disable=import-outside-toplevel
    from natsops_executor.service import service_version  # pylint: disable=import-outside-toplevel
    assert service_version(version) == expected
    ServiceConfig(name="natsops-executor", version=service_version(version))
