# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.stream against a real nats-server with JetStream: check, real, idempotent check, idempotent;
updates with diff, settings NATS cannot change refused, deletion, bad input."""

from __future__ import annotations

import asyncio

import nats
import nats.js.errors


async def _info(url, name):
    nc = await nats.connect(url)
    try:
        return await nc.jetstream().stream_info(name)
    except nats.js.errors.NotFoundError:
        return None
    finally:
        await nc.close()


def test_create_update_delete(module_task, nats_server, four_steps):
    url = nats_server.url
    args = {"name": "HEARTBEATS", "subjects": ["natsops.probe.heartbeat.*"], "max_msgs_per_subject": 1, "max_age": "7d",
            "duplicate_window": "2m", "max_bytes": "64MB", "storage": "file"}
    first, second = four_steps("stream", args)
    assert first["stream"]["name"] == "HEARTBEATS" and "state" not in first  # check mode: nothing was created
    info = asyncio.run(_info(url, "HEARTBEATS"))
    assert info.config.max_msgs_per_subject == 1 and info.config.max_age == 7 * 86400
    assert info.config.duplicate_window == 120 and info.config.max_bytes == 64 * 1024 * 1024
    assert second["state"]["messages"] == 0

    # an update: only the changed setting, shown in the diff by option name in the units the task uses (24h: a week is
    # 168h; 64MB stays 64MB); check mode first changes nothing
    update = dict(args, max_age="24h")
    checked = module_task("stream", update, check=True, diff=True)
    assert checked["changed"] and checked["changed_settings"] == ["max_age"]
    assert checked["diff"]["before"] == dict(checked["diff"]["after"], max_age="168h")
    assert checked["diff"]["after"] == {"subjects": ["natsops.probe.heartbeat.*"], "max_msgs_per_subject": 1, "max_age": "24h",
                                        "duplicate_window": "2m", "max_bytes": "64MB", "storage": "file"}, checked["diff"]
    assert asyncio.run(_info(url, "HEARTBEATS")).config.max_age == 7 * 86400
    assert [module_task("stream", update)["changed"] for attempt in range(2)] == [True, False]
    assert asyncio.run(_info(url, "HEARTBEATS")).config.max_age == 86400
    # options not given are left alone
    assert not module_task("stream", {"name": "HEARTBEATS"})["changed"]

    # what NATS cannot change is refused, and the stream is untouched
    refused = module_task("stream", dict(update, storage="memory"))
    assert refused["failed"] and "storage of stream HEARTBEATS cannot change" in refused["msg"]
    storage = asyncio.run(_info(url, "HEARTBEATS")).config.storage
    assert getattr(storage, "value", storage) == "file"

    gone = module_task("stream", {"name": "HEARTBEATS", "state": "absent"}, check=True, diff=True)
    assert gone["diff"]["before"]["max_age"] == "1d" and gone["diff"]["before"]["replicas"] == 1 and gone["diff"]["after"] == {}
    four_steps("stream", {"name": "HEARTBEATS", "state": "absent"})
    assert asyncio.run(_info(url, "HEARTBEATS")) is None


def test_bad_input_fails_clearly(module_task):
    bad = module_task("stream", {"name": "X1", "max_age": "a week"})
    assert bad["failed"] and "max_age" in bad["msg"] and "not a duration" in bad["msg"]
    bad = module_task("stream", {"name": "bad.name"})
    assert bad["failed"] and "invalid" in bad["msg"]
    bad = module_task("stream", {"name": "X2", "subjects": ["x.>"], "replicas": 7})
    assert bad["failed"] and "between 1 and 5" in bad["msg"]
    # JetStream's own refusal comes back with its code: subjects that overlap another stream's
    assert not module_task("stream", {"name": "A1", "subjects": ["overlap.>"]}).get("failed")
    overlap = module_task("stream", {"name": "A2", "subjects": ["overlap.x"]})
    assert overlap["failed"] and "JetStream refused" in overlap["msg"] and overlap.get("err_code"), overlap
    module_task("stream", {"name": "A1", "state": "absent"})
    # NATS unreachable: a clear failure, not a hang (nats-py retries forever with max_reconnect_attempts=0)
    down = module_task("stream", {"name": "A3", "servers": ["nats://127.0.0.1:9"], "connect_timeout": 2})
    assert down["failed"] and "cannot connect to NATS (servers=nats://127.0.0.1:9" in down["msg"], down
