# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""When an executor goes away mid-job: its callers learn it within seconds, and its jobs' processes die with it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time

import nats
import pytest

import devenv
from ansible_collections.natsops.fleet.plugins.module_utils.wire import contract

LOST_WITHIN = 10.0


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return False


def _wait_gone(pid, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


async def _run_until_stopped(url, instance, pidfile, stop):
    """Start `sleep 30` through the executor, stop the executor once it runs; returns (error, seconds to error)."""
    from ansible_collections.natsops.fleet.plugins.module_utils import _client as client_module  # pylint: disable=import-outside-toplevel
    nc = await nats.connect(url)
    try:
        client = client_module.AsyncExecutorClient(nc, instance)
        job = asyncio.ensure_future(client.exec_command(command="sleep 30 & echo $! > %s; wait" % pidfile))
        for _attempt in range(200):
            if os.path.exists(pidfile) and os.path.getsize(pidfile):
                break
            await asyncio.sleep(0.05)
        stopped = time.monotonic()
        stop()
        with pytest.raises(Exception) as info:
            await job
        return info.value, time.monotonic() - stopped
    finally:
        await nc.close()


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_the_jobs_of_a_stopped_executor_die_with_it(nats_server, tmp_path, how):
    executor = devenv.ExecutorProcess(nats_server.url, ["resilient-" + how], extra_args=["--shutdown-grace", "1"],
                                      log_dir=str(tmp_path))
    pidfile = str(tmp_path / "sleep.pid")
    sig = signal.SIGKILL if how == "sigkill" else signal.SIGTERM
    try:
        error, seconds = asyncio.run(_run_until_stopped(nats_server.url, "resilient-" + how, pidfile,
                                                        lambda: executor.proc.send_signal(sig)))
    finally:
        executor.stop()
    sleeper = int(open(pidfile, encoding="ascii").read())
    assert seconds < LOST_WITHIN, (error, seconds)
    expected = contract.E_EXECUTOR_LOST if how == "sigkill" else contract.E_INTERRUPTED
    assert getattr(error, "code", None) == expected, error
    assert getattr(error, "code", None) in contract.UNREACHABLE_CODES
    assert _wait_gone(sleeper), "the job's sleep %d outlived its executor" % sleeper


def _restart_repeatedly(url, instance, count, every, tmp_path, holder, stop):
    """Restart the executor of ``instance`` ``count`` times (SIGTERM, then a new process), ``every`` seconds."""
    for _restart in range(count):
        if stop.wait(every):
            return
        holder[0].stop()  # SIGTERM: it drains, then exits
        holder[0] = devenv.ExecutorProcess(url, [instance], log_dir=str(tmp_path))
        holder.append(None)  # one more restart done


@pytest.mark.parametrize("steady_peer", [False, True])
def test_executor_restarts_during_a_playbook_lose_no_task_and_run_none_twice(nats_server, playbook, tmp_path, steady_peer):
    instance = "rolling-%s" % ("pair" if steady_peer else "single")
    holder = [devenv.ExecutorProcess(nats_server.url, [instance], log_dir=str(tmp_path))]
    peer = devenv.ExecutorProcess(nats_server.url, [instance], log_dir=str(tmp_path)) if steady_peer else None
    ledger = tmp_path / "ledger.txt"
    stop = threading.Event()
    restarter = threading.Thread(target=_restart_repeatedly, args=(nats_server.url, instance, 10, 1.0, tmp_path, holder, stop))
    try:
        restarter.start()
        result = playbook.run("ledger.yml", hostvars={"ansible_nats_executor": instance},
                              extra_vars={"ledger": str(ledger), "count": 60, "pause": 0.25}, check=False)
    finally:
        stop.set()
        restarter.join()
        holder[0].stop()
        if peer is not None:
            peer.stop()
    restarts = len(holder) - 1
    assert result.returncode == 0 and "failed=0" in result.stdout and "unreachable=0" in result.stdout, result.stdout[-3000:]
    assert sorted(int(line) for line in ledger.read_text().split()) == list(range(60)), "each task ran exactly once"
    assert restarts >= 5, "the executor was restarted %d times during the playbook" % restarts


def _kill_nodes(cluster, kills, seed, stop, done):
    """``kills`` times: wait a random moment, SIGKILL a random node, start it again a moment later."""
    rng = random.Random(seed)
    for _kill in range(kills):
        if stop.wait(rng.uniform(0.3, 1.2)):
            return
        node = rng.choice(cluster.servers)
        node.kill()
        time.sleep(rng.uniform(0.2, 0.8))
        node.start()
        done.append(node.url)


def test_nats_node_kills_during_a_playbook_lose_no_task_and_run_none_twice(playbook, tmp_path):
    cluster = devenv.NatsCluster(3)
    servers = ",".join(cluster.urls)
    executor = None
    stop = threading.Event()
    kills = []
    try:
        executor = devenv.ExecutorProcess(cluster.urls[0], ["clustered"], log_dir=str(tmp_path),
                                          extra_args=[arg for url in cluster.urls[1:] for arg in ("--server", url)])
        ledger = tmp_path / "ledger.txt"
        killer = threading.Thread(target=_kill_nodes, args=(cluster, 20, 20261129, stop, kills))
        killer.start()
        try:
            result = playbook.run("ledger.yml", hostvars={"ansible_nats_executor": "clustered", "ansible_nats_servers": servers},
                                  extra_vars={"ledger": str(ledger), "count": 60, "pause": 0.25}, check=False)
        finally:
            stop.set()
            killer.join()
    finally:
        if executor is not None:
            executor.stop()
        cluster.stop()
    assert result.returncode == 0 and "failed=0" in result.stdout and "unreachable=0" in result.stdout, (
        result.stdout[-3000:] + result.stderr[-2000:])
    assert sorted(int(line) for line in ledger.read_text().split()) == list(range(60)), "each task ran exactly once"
    assert len(kills) >= 10, "only %d node kills happened during the playbook" % len(kills)
