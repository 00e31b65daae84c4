# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.audit_info through ansible-playbook against a real nats-server and real executors: the trail of
requests that ran, failed and were refused (unsigned, to an executor that trusts a signer), read back with filters
by instance id, verdict, operation, signer, start time and limit, a JMESPath query, a malformed record kept, check
mode, and clear failures for a missing stream and a bad start."""

from __future__ import annotations

import asyncio
import datetime
import json
import time

import nats
import pytest

import devenv
from ansible_collections.natsops.fleet.plugins.module_utils._client import (
    AsyncExecutorClient, CallerTrust, ExecutorTaskError,
)
from ansible_collections.natsops.fleet.plugins.module_utils.wire import signing
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import audit_stream

OPEN = "audit-open"      # an executor that runs unsigned requests
SIGNED = "audit-signed"  # an executor that trusts the controller's key only
SUBJECT = "natsops.audit.%s"
GARBAGE = b"not json {"


async def _records(url, instance):
    """The records of one instance id in the audit stream, as (stream sequence, decoded body or None)."""
    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().subscribe(SUBJECT % instance, stream=audit_stream("natsops"), ordered_consumer=True)
        found = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return found
            try:
                found.append((msg.metadata.sequence.stream, json.loads(msg.data)))
            except ValueError:
                found.append((msg.metadata.sequence.stream, None))
    finally:
        await nc.close()


def _wait_for_records(url, counts, timeout=15.0):
    """Wait until the executors' background publishing stored ``counts[instance]`` records for each; what is stored."""
    deadline = time.monotonic() + timeout
    while True:
        found = {instance: asyncio.run(_records(url, instance)) for instance in counts}
        if all(len(found[i]) == n for i, n in counts.items()):
            return found
        assert time.monotonic() < deadline, "records expected %s, found %s" % (counts, found)
        time.sleep(0.2)


async def _requests(url, controller_key, tmp_path, batch):
    """One batch of requests: on OPEN a command and, in batch "one", a command that times out (failed), a put, a fetch of
    a missing file (refused) and a malformed record; on SIGNED a signed command and, in batch "one", an unsigned one
    (refused)."""
    nc = await nats.connect(url)
    try:
        opened = AsyncExecutorClient(nc, OPEN, trust=CallerTrust())
        signed = AsyncExecutorClient(nc, SIGNED, trust=CallerTrust(controller_key))
        unsigned = AsyncExecutorClient(nc, SIGNED, trust=CallerTrust())
        assert (await opened.exec_command(command="echo %s" % batch))[0] == 0
        assert (await signed.exec_command(command="echo signed %s" % batch))[0] == 0
        if batch != "one":
            return
        with pytest.raises(ExecutorTaskError) as timed_out:  # accepted, then it failed
            await opened.exec_command(command="sleep 5", timeout=0.3)
        assert timed_out.value.code == "timeout"
        source = tmp_path / "source.txt"
        source.write_text("payload\n")
        await opened.put_file(str(source), str(tmp_path / "placed.txt"))
        with pytest.raises(ExecutorTaskError) as missing:  # refused: there is nothing to send
            await opened.fetch_file(str(tmp_path / "missing.txt"), str(tmp_path / "fetched.txt"))
        assert missing.value.code == "not_found"
        with pytest.raises(ExecutorTaskError) as refused:
            await unsigned.exec_command(command="echo never")
        assert refused.value.code == signing.E_UNSIGNED
        await nc.jetstream().publish(SUBJECT % OPEN, GARBAGE)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def trail(nats_server, audit_stream_made, tmp_path_factory):  # pylint: disable=unused-argument
    """Two executors and the trail of two batches of requests; returns what the stream holds per instance id, the
    controller's public key and a time between the batches."""
    folder = tmp_path_factory.mktemp("audit")
    keys = {}
    for name in ("controller", "executor"):
        path = folder / ("%s.nk" % name)
        path.write_bytes(signing.generate_seed() + b"\n")
        keys[name] = str(path)
    controller = signing.SigningKey.from_file(keys["controller"]).public_key

    executors = [
        devenv.ExecutorProcess(nats_server.url, [OPEN], log_dir=str(folder)),
        devenv.ExecutorProcess(nats_server.url, [SIGNED], log_dir=str(folder), extra_args=[
            "--trusted-signer", controller, "--signing-key", keys["executor"]]),
    ]
    try:
        asyncio.run(_requests(nats_server.url, keys["controller"], folder, "one"))
        _wait_for_records(nats_server.url, {OPEN: 5, SIGNED: 2})
        time.sleep(1.0)
        between = datetime.datetime.now(datetime.timezone.utc)
        time.sleep(1.0)
        asyncio.run(_requests(nats_server.url, keys["controller"], folder, "two"))
        found = _wait_for_records(nats_server.url, {OPEN: 6, SIGNED: 3})
        yield found, controller, between
    finally:
        for proc in executors:
            proc.stop()


def _read(local_play, tmp_path, tasks, check=False):
    """Run natsops.fleet.audit_info once per entry of ``tasks`` (its arguments) in one play; their results."""
    out = tmp_path / "audit-results.json"
    play = [{"name": "audit_info %d" % i, "natsops.fleet.audit_info": args, "register": "r%d" % i, "ignore_errors": True}
            for i, args in enumerate(tasks)]
    play.append({"name": "keep the results", "check_mode": False, "ansible.builtin.copy": {
        "content": "{{ [%s] | to_json }}" % ", ".join("r%d" % i for i in range(len(tasks))), "dest": str(out)}})
    run = local_play(play, check=check)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return json.loads(out.read_text(encoding="utf-8"))


def test_the_trail_is_read_with_filters(trail, local_play, tmp_path):
    found, controller, between = trail
    both = [OPEN, SIGNED]
    (by_instance, refused, failed, limited, since_between, signer, puts, queried, unfiltered, everything) = _read(
        local_play, tmp_path, [
            {"instance_ids": [SIGNED], "since": "all"},
            {"instance_ids": both, "verdicts": ["refused"]},
            {"instance_ids": both, "verdicts": ["failed"], "ops": ["exec"]},
            {"instance_ids": [OPEN], "limit": 2},
            {"instance_ids": both, "since": between.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "limit": 0},
            {"instance_ids": both, "signer": controller},
            {"instance_ids": both, "ops": ["put", "fetch"]},
            {"instance_ids": [SIGNED], "query": "[?verdict=='refused'].code"},
            {"since": "1h", "limit": 0},
            {"instance_ids": [OPEN], "limit": 0},
        ])
    for result in (by_instance, refused, failed, limited, since_between, signer, puts, queried, unfiltered, everything):
        assert not result.get("failed") and not result["changed"], result
        assert result["stream"] == "natsops_audit" and result["count"] == len(result["records"])
        seqs = [r["seq"] for r in result["records"]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs  # oldest first, each once

    # by instance id: exactly what the stream holds for it, each record with its sequence, subject and stored time
    assert [r["seq"] for r in by_instance["records"]] == [seq for seq, _doc in found[SIGNED]]
    assert all(r["subject"] == SUBJECT % SIGNED and r["instance"] == SIGNED for r in by_instance["records"])
    assert all(r["stored"].endswith("Z") and r["time"].endswith("Z") for r in by_instance["records"])
    assert [r["verdict"] for r in by_instance["records"]] == ["ok", "refused", "ok"]
    # (an unsigned request is refused before it is parsed: its record has no command)
    assert [r.get("command") for r in by_instance["records"]] == ["echo signed one", None, "echo signed two"]

    # by verdict, across two instance ids (two filter subjects): the unsigned request and the missing file
    assert sorted((r["instance"], r["op"], r["code"]) for r in refused["records"]) == [
        (OPEN, "fetch", "not_found"), (SIGNED, "exec", "unsigned")], refused
    assert all(r["verdict"] == "refused" for r in refused["records"])
    assert [(r["command"], r["code"]) for r in failed["records"]] == [("sleep 5", "timeout")], failed

    # limit: the newest two, still oldest first; matched counts them all (the malformed record included)
    assert limited["count"] == 2 and limited["matched"] == len(found[OPEN]) == 6
    assert [r["seq"] for r in limited["records"]] == [seq for seq, _doc in found[OPEN]][-2:]

    # since a time between the batches: the second batch alone
    assert sorted(r.get("command") for r in since_between["records"]) == ["echo signed two", "echo two"], since_between
    assert since_between["start_time"] == between.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    # by signer: the signed commands, never the unsigned one
    assert [r.get("command") for r in signer["records"]] == ["echo signed one", "echo signed two"]
    assert all(r["signer"] == controller for r in signer["records"])

    # by operation: the put that worked and the fetch of a missing file that failed
    # (the put's record is written when its job ends, which may be after the fetch was refused)
    assert sorted((r["op"], r["verdict"], r["path"].rsplit("/", 1)[-1]) for r in puts["records"]) == [
        ("fetch", "refused", "missing.txt"), ("put", "ok", "placed.txt")], puts

    # a JMESPath query on the records
    assert queried["query_result"] == ["unsigned"]

    # no filter: every instance id of the stream (other tests' executors too), ours among them
    assert {SUBJECT % OPEN, SUBJECT % SIGNED} <= {r["subject"] for r in unfiltered["records"]}
    assert unfiltered["count"] == unfiltered["matched"] >= 9  # limit 0: all of them

    # the malformed record is returned, not fatal, and no field filter matches it
    invalid = [r for r in everything["records"] if r.get("invalid")]
    assert invalid == [{"invalid": True, "raw": GARBAGE.decode(), "seq": invalid[0]["seq"], "subject": SUBJECT % OPEN,
                        "stored": invalid[0]["stored"]}]
    assert not any(r.get("invalid") for r in refused["records"] + puts["records"] + signer["records"])


def test_check_mode_reads_the_same(trail, local_play, tmp_path):
    args = {"instance_ids": [OPEN, SIGNED], "since": "all", "limit": 0}
    checked, real = _read(local_play, tmp_path, [args], check=True)[0], _read(local_play, tmp_path, [args])[0]
    assert not checked.get("failed") and not checked["changed"] and checked["count"] == 9
    assert checked["records"] == real["records"]


def test_a_start_after_the_last_record_reads_nothing(trail, local_play, tmp_path):
    time.sleep(2)  # the last record is older than the second the first task asks for
    recent, future = _read(local_play, tmp_path, [
        {"instance_ids": [OPEN, SIGNED], "since": "1s"},
        {"instance_ids": [OPEN, SIGNED], "since": "2099-01-01"},
    ])
    for result in (recent, future):
        assert not result.get("failed") and result["records"] == [] and result["count"] == 0 and result["matched"] == 0, result


def test_failures_say_what_to_do(trail, local_play, tmp_path):
    missing, bad_since, bad_instance, bad_limit = _read(local_play, tmp_path, [
        {"stream": "natsops_nothing_here"},
        {"since": "last tuesday"},
        {"instance_ids": ["{{ '{{' }} zone }}"]},
        {"limit": -1},
    ])
    assert missing["failed"] and "the audit stream natsops_nothing_here does not exist" in missing["msg"]
    assert "natsops.fleet.nats_server role" in missing["msg"] and "natsops.fleet.stream" in missing["msg"]
    assert bad_since["failed"] and "since 'last tuesday' is neither a duration" in bad_since["msg"]
    assert bad_instance["failed"] and "unrendered" in bad_instance["msg"], bad_instance
    assert bad_limit["failed"] and "limit must be 0" in bad_limit["msg"]
