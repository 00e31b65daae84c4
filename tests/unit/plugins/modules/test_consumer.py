# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""consumer: ack_wait compared the way NATS stores it when backoff is set (issue 19: the README's consumer reported
changed on every run), diffs in option names and the user's units, check mode on a stream the play creates first."""

from __future__ import annotations

import asyncio

import pytest

from nats.js.api import ConsumerConfig, ConsumerInfo
import nats.js.errors

from ansible_collections.natsops.fleet.plugins.modules import consumer

S = 10**9
README = {"stream": "JOBS", "name": "workers", "ack_wait": "30s", "max_deliver": 4, "backoff": ["10s", "1m", "5m"]}


def _params(**given):
    params = {option: None for option in consumer._FIELDS}
    params.update(filter_subjects=None, state="present")
    params.update(given)
    return params


class _FakeJetStream:
    """A stream JOBS (or none) with at most one consumer, stored as nats-server stores it (ack_wait = backoff[0], its
    own metadata keys added)."""

    def __init__(self, stored=None, stream=True):
        self.stored = stored
        self.stream = stream
        self.puts = []

    async def stream_info(self, name):
        if not self.stream:
            raise nats.js.errors.NotFoundError()
        return object()

    async def consumer_info(self, stream, name):
        if self.stored is None:
            raise nats.js.errors.NotFoundError()
        return ConsumerInfo.from_response({"stream_name": stream, "name": name, "config": dict(self.stored), "created": "2026-11-29T00:00:00Z",
                                           "num_pending": 0, "num_ack_pending": 0, "num_redelivered": 0, "num_waiting": 0})

    async def add_consumer(self, stream, config):
        self.puts.append(config)
        stored = config.as_dict()
        if stored.get("backoff"):
            stored["ack_wait"] = stored["backoff"][0]
        stored["metadata"] = dict(stored.get("metadata") or {}, **{"_nats.ver": "2.15.1", "_nats.level": "5"})
        self.stored = stored
        return await self.consumer_info(stream, config.durable_name)


class _FakeConnection:
    def __init__(self, js):
        self.js = js

    def jetstream(self):
        return self.js


def _ensure(js, params, check_mode=False):
    return asyncio.run(consumer.ensure(_FakeConnection(js), params, check_mode))


SERVER_VIEW = {"durable_name": "workers", "ack_policy": "explicit", "ack_wait": 10 * S, "max_deliver": 4,
               "backoff": [10 * S, 60 * S, 300 * S]}


def test_readme_consumer_is_idempotent_and_says_why():
    js = _FakeJetStream(dict(SERVER_VIEW))
    changed, result, diff = _ensure(js, _params(**README))
    assert not changed and not js.puts, result
    assert result["changed_settings"] == []
    assert result["warnings"] == ["consumer workers: ack_wait 30s has no effect with backoff: NATS waits backoff[0] (10s) "
                                  "for the first acknowledgement and stores that as ack_wait, so the task compares ack_wait as "
                                  "10s; drop ack_wait or set it to 10s"]
    assert diff["before"] == diff["after"]


def test_ack_wait_equal_to_the_first_backoff_or_not_given_warns_nothing():
    for given in (dict(README, ack_wait="10s"), dict(README, ack_wait=None)):
        changed, result, _diff = _ensure(_FakeJetStream(dict(SERVER_VIEW)), _params(**given))
        assert not changed and "warnings" not in result


def test_ack_wait_alone_is_compared_with_the_consumers_own_backoff():
    changed, result, _diff = _ensure(_FakeJetStream(dict(SERVER_VIEW)), _params(stream="JOBS", name="workers", ack_wait="30s"))
    assert not changed and "backoff[0] (10s)" in result["warnings"][0]


def test_a_real_change_shows_in_the_diff_in_the_users_words():
    js = _FakeJetStream(dict(SERVER_VIEW))
    given = dict(README)
    given.update(backoff=["20s", "2m", "5m"], max_deliver=5)
    changed, result, diff = _ensure(js, _params(**given), check_mode=True)
    assert changed and not js.puts
    assert result["changed_settings"] == ["ack_wait", "backoff", "max_deliver"]
    assert diff == {"before": {"ack_wait": "10s", "max_deliver": 4, "backoff": ["10s", "1m", "5m"]},
                    "after": {"ack_wait": "20s", "max_deliver": 5, "backoff": ["20s", "2m", "5m"]}}


def test_created_then_unchanged():
    js = _FakeJetStream()
    changed, result, diff = _ensure(js, _params(**README))
    assert changed and len(js.puts) == 1 and diff["before"] == {}
    assert diff["after"] == {"ack_wait": "10s", "max_deliver": 4, "backoff": ["10s", "1m", "5m"]}
    assert result["changed_settings"] == ["ack_wait", "backoff", "max_deliver"]
    changed, _result, _diff = _ensure(js, _params(**README))
    assert not changed and len(js.puts) == 1


def test_removing_the_backoff_is_idempotent():
    js = _FakeJetStream(dict(SERVER_VIEW))
    given = _params(stream="JOBS", name="workers", backoff=[], ack_wait="30s")
    changed, _result, _diff = _ensure(js, given)
    assert changed and not js.stored.get("backoff") and js.stored["ack_wait"] == 30 * S
    changed, _result, _diff = _ensure(js, given)
    assert not changed


def test_metadata_is_compared_without_the_keys_the_server_adds():
    js = _FakeJetStream()
    given = _params(stream="JOBS", name="workers", metadata={"team": "ops"})
    assert _ensure(js, given)[0] and js.stored["metadata"]["_nats.ver"] == "2.15.1"
    changed, _result, diff = _ensure(js, given, check_mode=True)
    assert not changed and diff["before"] == diff["after"] == {"metadata": {"team": "ops"}}
    changed, result, diff = _ensure(js, _params(stream="JOBS", name="workers", metadata={"team": "sre"}), check_mode=True)
    assert changed and result["changed_settings"] == ["metadata"] and diff["before"] == {"metadata": {"team": "ops"}}


def test_check_mode_on_a_stream_the_play_creates_first():
    js = _FakeJetStream(stream=False)
    changed, result, diff = _ensure(js, _params(**README), check_mode=True)
    assert changed and not js.puts and diff["after"]["backoff"] == ["10s", "1m", "5m"]
    assert "stream JOBS does not exist (yet)" in result["warnings"][0]
    with pytest.raises(consumer.ResourceError, match="stream JOBS does not exist; create it first"):
        _ensure(js, _params(**README))


def test_normalise_ack_wait_leaves_consumers_without_backoff_alone():
    wanted = consumer.wanted_config(_params(stream="JOBS", name="workers", ack_wait="30s"))
    assert consumer.normalise_ack_wait(_params(ack_wait="30s", name="workers"), wanted, {"ack_wait": 5 * S}) == []
    assert wanted["ack_wait"] == 30 * S
    assert ConsumerConfig  # the fake stores what the client sends
