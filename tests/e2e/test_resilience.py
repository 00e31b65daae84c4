# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""When an executor goes away mid-job: its callers learn it within seconds, and its jobs' processes die with it."""

from __future__ import annotations

import asyncio
import os
import signal
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
