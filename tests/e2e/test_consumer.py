# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.consumer against a real nats-server: pull and push consumers in four steps (check, real,
idempotent check, idempotent), an update with diff, settings NATS cannot change refused, delivery that
follows the settings (redelivery count), deletion, bad input."""

from __future__ import annotations

import asyncio

import nats
import nats.js.errors


async def _info(url, stream, name):
    nc = await nats.connect(url)
    try:
        return await nc.jetstream().consumer_info(stream, name)
    except nats.js.errors.NotFoundError:
        return None
    finally:
        await nc.close()


async def _deliveries(url, stream, name, subject):
    """Publish one message, fetch it without acknowledging until the consumer gives up; count deliveries."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.publish(subject, b"job")
        sub = await js.pull_subscribe_bind(name, stream=stream)
        count = 0
        for attempt in range(8):
            try:
                msgs = await sub.fetch(1, timeout=1.5)
            except nats.errors.TimeoutError:
                continue
            count += len(msgs)
        return count
    finally:
        await nc.close()


def test_pull_and_push_consumers(module_task, nats_server, four_steps):
    url = nats_server.url
    assert not module_task("stream", {"name": "JOBS", "subjects": ["jobs.>"]}).get("failed")
    pull = {"stream": "JOBS", "name": "workers", "filter_subjects": ["jobs.probe.>"], "ack_policy": "explicit",
            "ack_wait": "1s", "max_deliver": 3, "max_ack_pending": 100, "description": "probe jobs"}
    first, second = four_steps("consumer", pull)
    assert "state" not in first and asyncio.run(_info(url, "JOBS", "workers")) is not None
    info = asyncio.run(_info(url, "JOBS", "workers"))
    assert info.config.filter_subject == "jobs.probe.>" and info.config.ack_wait == 1 and info.config.max_deliver == 3
    assert second["consumer"]["durable_name"] == "workers" and second["state"]["num_pending"] == 0
    # the settings are real: an unacknowledged message is delivered max_deliver times, then no more
    assert asyncio.run(_deliveries(url, "JOBS", "workers", "jobs.probe.install")) == 3

    # an update of one setting, with diff; check mode first changes nothing
    update = dict(pull, max_deliver=5, filter_subjects=["jobs.probe.>", "jobs.agent.>"])
    checked = module_task("consumer", update, check=True, diff=True)
    assert checked["changed_settings"] == ["filter_subjects", "max_deliver"], checked
    assert checked["diff"]["before"]["max_deliver"] == 3 and checked["diff"]["after"]["max_deliver"] == 5
    assert asyncio.run(_info(url, "JOBS", "workers")).config.max_deliver == 3
    assert [module_task("consumer", update)["changed"] for attempt in range(2)] == [True, False]
    info = asyncio.run(_info(url, "JOBS", "workers"))
    assert info.config.max_deliver == 5 and sorted(info.config.filter_subjects) == ["jobs.agent.>", "jobs.probe.>"]
    assert not module_task("consumer", {"stream": "JOBS", "name": "workers"})["changed"]  # options not given: left alone

    # what NATS cannot change is refused, the consumer untouched
    refused = module_task("consumer", dict(update, ack_policy="none"))
    assert refused["failed"] and "ack_policy of consumer workers cannot change" in refused["msg"]
    refused = module_task("consumer", dict(update, deliver_subject="deliver.workers"))
    assert refused["failed"] and "cannot become a push consumer" in refused["msg"]
    policy = asyncio.run(_info(url, "JOBS", "workers")).config.ack_policy
    assert getattr(policy, "value", policy) == "explicit"

    # a push consumer with backoff and a queue group
    push = {"stream": "JOBS", "name": "audit", "deliver_subject": "deliver.audit", "deliver_group": "auditors",
            "deliver_policy": "new", "max_deliver": 4, "backoff": ["1s", "2s", "1m"]}
    four_steps("consumer", push)
    info = asyncio.run(_info(url, "JOBS", "audit"))
    assert info.config.deliver_subject == "deliver.audit" and info.config.deliver_group == "auditors"
    assert info.config.backoff == [1, 2, 60]

    four_steps("consumer", {"stream": "JOBS", "name": "workers", "state": "absent"})
    assert asyncio.run(_info(url, "JOBS", "workers")) is None
    module_task("stream", {"name": "JOBS", "state": "absent"})


def test_ack_wait_with_backoff_is_compared_as_nats_stores_it(module_task, nats_server, four_steps):
    """The README's consumer of issue 19 (ack_wait 30s, backoff 10s, 1m, 5m) reported changed on every run with an
    empty diff: NATS stores ack_wait = backoff[0]. Now idempotent, with a warning that ack_wait has no effect."""
    assert not module_task("stream", {"name": "RETRY", "subjects": ["retry.>"]}).get("failed")
    args = {"stream": "RETRY", "name": "workers", "ack_wait": "30s", "max_deliver": 4, "backoff": ["10s", "1m", "5m"]}
    first, second = four_steps("consumer", args)
    info = asyncio.run(_info(nats_server.url, "RETRY", "workers"))
    assert info.config.ack_wait == 10 and info.config.backoff == [10, 60, 300]
    again = module_task("consumer", args, diff=True)
    assert not again["changed"] and again["diff"]["before"] == again["diff"]["after"]
    assert any("ack_wait 30s has no effect with backoff" in w and "set it to 10s" in w for w in again.get("warnings", [])), again
    # a change shows in the diff, in the task's words and units
    checked = module_task("consumer", dict(args, max_deliver=5, backoff=["20s", "2m", "5m"]), check=True, diff=True)
    assert checked["changed"] and checked["changed_settings"] == ["ack_wait", "backoff", "max_deliver"]
    assert checked["diff"] == {"before": {"ack_wait": "10s", "max_deliver": 4, "backoff": ["10s", "1m", "5m"]},
                               "after": {"ack_wait": "20s", "max_deliver": 5, "backoff": ["20s", "2m", "5m"]}}
    module_task("stream", {"name": "RETRY", "state": "absent"})


def test_bad_input_fails_clearly(module_task):
    bad = module_task("consumer", {"stream": "JOBS", "name": "bad.name"})
    assert bad["failed"] and "name 'bad.name' is invalid" in bad["msg"]
    bad = module_task("consumer", {"stream": "JOBS", "name": "c", "deliver_policy": "by_start_sequence"})
    assert bad["failed"] and "needs opt_start_seq" in bad["msg"]
    bad = module_task("consumer", {"stream": "JOBS", "name": "c", "ack_wait": "soon"})
    assert bad["failed"] and "not a duration" in bad["msg"]
    bad = module_task("consumer", {"stream": "NOPE", "name": "c"})
    assert bad["failed"] and "stream NOPE does not exist" in bad["msg"]
    checked = module_task("consumer", {"stream": "NOPE", "name": "c", "max_deliver": 2}, check=True, diff=True)  # made earlier in a play
    assert checked["changed"] and not checked.get("failed") and checked["diff"]["after"] == {"max_deliver": 2}, checked
