# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The parts of the service that need no NATS: job accounting, the choice of host, configuration sources."""

from __future__ import annotations

import asyncio

import pytest

from natsops_executor import config
from natsops_executor._wire.contract import E_SPAWN, WireError
from natsops_executor._wire.messages import Target
from natsops_executor._wire.names import OPTION_SOURCES
from natsops_executor.hosts.local import LocalHost
from natsops_executor.service import Executor, JobBook, service_version


async def test_job_book_bounds_and_counts_jobs():
    book = JobBook(max_jobs=2)
    gate = asyncio.Event()
    peak = []

    async def job(ok):
        async with book.run() as outcome:
            peak.append(book.running)
            await gate.wait()
            outcome.ok = ok

    for ok in (True, True, False):
        book.start(job(ok))
    await asyncio.sleep(0.05)
    assert book.running == 2  # the third waits for a slot
    gate.set()
    await book.finish(5)
    assert max(peak) == 2 and book.stats() == {"running": 0, "waiting": 0, "max_jobs": 2, "completed": 2, "failed": 1,
                                               "busy": 0}


async def test_a_flood_is_refused_as_busy_not_queued_without_end():
    book = JobBook(max_jobs=1, max_waiting=2)
    gate = asyncio.Event()
    outcomes = []

    async def job():
        try:
            async with book.run():
                await gate.wait()
            outcomes.append("ran")
        except WireError as exc:
            outcomes.append(exc.code)

    for _job in range(5):
        book.start(job())
    await asyncio.sleep(0.05)
    gate.set()
    await book.finish(5)
    assert sorted(outcomes) == ["busy", "busy", "ran", "ran", "ran"] and book.stats()["busy"] == 2


async def test_a_job_that_raises_is_counted_failed():
    book = JobBook(max_jobs=1)
    with pytest.raises(RuntimeError):
        async with book.run():
            raise RuntimeError("boom")
    assert (book.completed, book.failed, book.running) == (0, 1, 0)


def test_the_host_is_chosen_once_per_target():
    executor = Executor(config.load(["--instance", "web1"], environ={}))
    assert isinstance(executor.host_for(None), LocalHost)
    with pytest.raises(WireError) as info:  # the SSH pool starts with the service
        executor.host_for(Target(host="10.0.0.1", user="root"))
    assert info.value.code == E_SPAWN


def test_warm_is_on_unless_turned_off_and_the_command_line_wins(tmp_path):
    assert config.load(["--instance", "web1"], environ={}).warm is True
    assert Executor(config.load(["--instance", "web1"], environ={})).local.warm is not None
    assert config.load(["--instance", "web1", "--no-warm"], environ={}).warm is False
    assert config.load(["--instance", "web1"], environ={"NATSOPS_WARM": "0"}).warm is False
    assert config.load(["--instance", "web1", "--warm"], environ={"NATSOPS_WARM": "0"}).warm is True
    path = tmp_path / "executor.yml"
    path.write_text("warm: false\n")
    cfg = config.load(["--instance", "web1", "--config", str(path)], environ={})
    assert cfg.warm is False and Executor(cfg).local.warm is None


def test_every_nats_option_reads_its_natscli_variable():
    cfg = config.load(["--instance", "web1"], environ={env: "x" for env in ("NATS_TLS_HOSTNAME", "NATS_INBOX_PREFIX")})
    assert cfg.tls_hostname == "x" and cfg.inbox_prefix == "x"
    for name, (_field, env) in OPTION_SOURCES.items():
        assert config.ENVIRONMENT[name] == env


@pytest.mark.parametrize("argv, needle", [([], "no instance id"), (["--instance", "a.b"], "bad instance id"),
                                          (["--instance", "a", "--max-jobs", "0"], "max_jobs")])
def test_bad_configuration_is_refused(argv, needle):
    with pytest.raises(config.ConfigError) as info:
        config.load(argv, environ={})
    assert needle in str(info.value)


@pytest.mark.parametrize("version, semver", [("0.1.0", "0.1.0"), ("0.1.0.post900", "0.1.0+post900"), ("1.2", "1.2.0"),
                                             ("x", "0.0.0+x")])
def test_service_version(version, semver):
    assert service_version(version) == semver


@pytest.mark.parametrize("argv, policy", [([], "strict"), (["--bklite-compat"], "accept-new"),
                                          (["--bklite-compat", "--ssh-host-key-policy", "strict"], "strict"),
                                          (["--ssh-host-key-policy", "ignore"], "ignore")])
def test_host_key_policy_defaults_to_accept_new_only_under_bklite_compat(argv, policy):
    cfg = config.load(["--instance", "zone"] + argv, environ={})
    assert cfg.host_key_policy() == policy
    assert cfg.ssh_settings().host_keys.policy == policy
