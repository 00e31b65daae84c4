# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Payload by digest end to end: a playbook of repeated module runs sends each module's zip once; the executor's
stats show the later runs served from its cache; an executor that restarted (empty cache) or keeps nothing still
runs everything right."""

from __future__ import annotations

import threading
import time

import devenv
from conftest import executor_load

INSTANCE = "e2e-digest"
AFTER_RUNS = 3 + 1 + 4 + 4  # module runs of payload_digest.yml after the restart gate: command, file (directory and touch), stat
MODULES = 3                 # distinct modules: each payload is sent once to a new executor


def _start(nats_server, tmp_path, *extra):
    return devenv.ExecutorProcess(nats_server.url, [INSTANCE], extra_args=list(extra), log_dir=str(tmp_path))


def _run(playbook, tmp_path, tag, **extra_vars):
    work = tmp_path / ("work-" + tag)
    playbook.run("payload_digest.yml", host=INSTANCE, extra_vars=dict(extra_vars, work=str(work), tag=tag))
    assert sorted(p.name for p in work.iterdir()) == ["touched-%d" % i for i in range(1, 5)]


def _discovered(nats_server):
    from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # pylint: disable=import-outside-toplevel
    client = ExecutorClient({"servers": nats_server.url}, INSTANCE).connect()
    try:
        return [r for r in client.discover() if INSTANCE in r["instances"]][0]
    finally:
        client.close()


def test_later_runs_come_from_the_cache_and_a_restarted_executor_is_sent_the_payload_again(playbook, nats_server, tmp_path):
    gate = tmp_path / "restarted"
    procs = [_start(nats_server, tmp_path)]
    before = {}

    def restart():
        """Halfway through the playbook (zips are the same only within one run of ansible-playbook): the executor
        restarts with an empty cache while the control process still believes it holds the command module's zip."""
        waiting = tmp_path / "restarted.waiting"
        deadline = time.monotonic() + 120
        while not waiting.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        before.update(executor_load(nats_server.url, INSTANCE))
        procs[0].stop()
        procs.append(_start(nats_server, tmp_path))
        gate.touch()

    try:
        assert _discovered(nats_server)["payload_cache"] is True
        restarter = threading.Thread(target=restart)
        restarter.start()
        try:
            _run(playbook, tmp_path, "one", restart_gate=str(gate))
        finally:
            restarter.join()
        # before the restart: the command module's first run sent its zip (kept), the next 5 named it by digest
        assert before["payload_hits"] == 5 and before["payload_misses"] == 0 and before["payload_cached_blobs"] == 1, before
        saved_per_run = before["payload_bytes_saved"] // before["payload_hits"]
        assert saved_per_run > 4096, before
        print("payload by digest: %d runs from the cache, %d bytes of zip not sent per run" % (before["payload_hits"], saved_per_run))
        # after it: the first command run named its zip, was refused (payload_missing, nothing ran) and sent again
        # once; every other run but each module's first came from the new executor's cache
        after = executor_load(nats_server.url, INSTANCE)
        assert after["payload_misses"] == 1 and after["failed"] == 1, after
        assert after["payload_hits"] == AFTER_RUNS - MODULES and after["payload_cached_blobs"] == MODULES, after
    finally:
        for proc in procs:
            proc.stop()


def test_an_executor_that_keeps_nothing_runs_everything_sent(playbook, nats_server, tmp_path):
    proc = _start(nats_server, tmp_path, "--payload-cache", "0")
    try:
        assert _discovered(nats_server)["payload_cache"] is False
        _run(playbook, tmp_path, "off")
        load = executor_load(nats_server.url, INSTANCE)
        # the second command run named its zip once, was told nothing is kept, and the caller stopped naming any
        assert load["payload_misses"] == 1 and load["payload_hits"] == 0 and load["payload_cached_blobs"] == 0, load
    finally:
        proc.stop()
