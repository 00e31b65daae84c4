# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.publish and natsops.fleet.request against a real nats-server (and a real executor to ask)."""

from __future__ import annotations

import asyncio
import json

import nats


async def _stream(url, action):
    nc = await nats.connect(url)
    try:
        return await action(nc.jetstream())
    finally:
        await nc.close()


def test_publish_core_and_jetstream_with_a_dedupe_id(module_task, nats_server):
    url = nats_server.url

    async def create(js):
        await js.add_stream(name="EVENTS", subjects=["events.>"], duplicate_window=120)

    asyncio.run(_stream(url, create))
    try:
        checked = module_task("publish", {"subject": "events.core", "data": "x"}, check=True)
        assert checked["changed"]
        core = module_task("publish", {"subject": "events.core", "json": {"zone": "管理网", "n": 1},
                                       "headers": {"Source": "ansible"}})
        assert core["changed"] and core["size"] == len('{"n": 1, "zone": "管理网"}'.encode())
        args = {"subject": "events.deploy", "data": "release 1.4.2", "msg_id": "deploy-1.4.2", "stream": "EVENTS"}
        first = module_task("publish", args)
        again = module_task("publish", args)
        assert (first["changed"], first["duplicate"], first["stream"]) == (True, False, "EVENTS")
        assert (again["changed"], again["duplicate"], again["seq"]) == (False, True, first["seq"])
        wrong = module_task("publish", dict(args, msg_id="other", stream="NOPE"))
        assert wrong["failed"] and "JetStream refused" in wrong["msg"], wrong

        async def stored(js):
            info = await js.stream_info("EVENTS")
            core_msg = await js.get_msg("EVENTS", 1)
            return info.state.messages, core_msg

        count, core_msg = asyncio.run(_stream(url, stored))
        assert count == 2  # the check-mode publish sent nothing, the duplicate was dropped
        assert json.loads(core_msg.data) == {"zone": "管理网", "n": 1} and core_msg.headers["Source"] == "ansible"
    finally:
        async def delete(js):
            await js.delete_stream("EVENTS")
        asyncio.run(_stream(url, delete))


def test_request_with_a_query(module_task):
    # NATS micro discovery of the session's executor is a JSON request/reply service
    reply = module_task("request", {"subject": "$SRV.INFO.natsops-executor", "query": "metadata.instances"})
    assert not reply["changed"] and reply["json"]["name"] == "natsops-executor"
    assert "e2e-host" in json.loads(reply["query_result"])
    nobody = module_task("request", {"subject": "nobody.serves.this", "timeout": 2})
    assert nobody["failed"] and "no responders" in nobody["msg"] and "nobody.serves.this" in nobody["msg"]
    bad = module_task("request", {"subject": "natsops.exec.*"})
    assert bad["failed"] and "invalid" in bad["msg"]
    skipped = module_task("request", {"subject": "$SRV.INFO.natsops-executor"}, check=True)
    assert skipped.get("skipped") and "data" not in skipped
