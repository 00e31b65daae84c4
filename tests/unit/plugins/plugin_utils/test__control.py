# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import asyncio

import pytest

from ansible_collections.natsops.fleet.plugins.module_utils._client import AsyncExecutorClient
from ansible_collections.natsops.fleet.plugins.plugin_utils import _control as control


class _Discovering(AsyncExecutorClient):
    """A client whose discovery returns fixed records and counts its fan-outs."""

    def __init__(self, instance_id, records, counter):
        super().__init__(None, instance_id)
        self._records = records
        self._counter = counter

    async def discover(self, wait=0.5, stats=False):
        self._counter.append(wait)
        await asyncio.sleep(0.01)
        return self._records


def _record(instances, account):
    return {"namespace": "natsops", "instances": instances, "account": account, "id": "x", "hostname": "h"}


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(control, "_ACCOUNTS", {})
    monkeypatch.setattr(control, "_DISCOVERY", {"at": float("-inf"), "executors": [], "lock": asyncio.Lock()})


def test_one_discovery_answers_every_host_and_workers_asking_at_once_share_it():
    fanouts = []
    records = [_record(["web1"], "natsops"), _record(["web2", "web3"], "root")]

    async def ask():
        return await asyncio.gather(*(control._account(_Discovering(i, records, fanouts), 0.5)
                                      for i in ("web1", "web2", "web3", "web1")))

    assert asyncio.run(ask()) == ["natsops", "root", "root", "natsops"]
    assert len(fanouts) == 1


def test_an_instance_nobody_serves_is_not_kept_and_asked_again_only_after_a_while(monkeypatch):
    fanouts = []
    assert asyncio.run(control._account(_Discovering("coming", [], fanouts), 0.5)) is None
    assert asyncio.run(control._account(_Discovering("coming", [], fanouts), 0.5)) is None
    assert len(fanouts) == 1  # within DISCOVERY_REUSE the last discovery answers
    monkeypatch.setattr(control, "DISCOVERY_REUSE", -1.0)
    assert asyncio.run(control._account(_Discovering("coming", [_record(["coming"], "deploy")], fanouts), 0.5)) == "deploy"
    assert len(fanouts) == 2
