# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streams against an in-memory stand-in for a NATS connection (unit level; e2e uses real NATS)."""
from __future__ import annotations

import asyncio
import itertools

import pytest

from ansible_collections.natsops.fleet.plugins.module_utils.wire import contract as c
from ansible_collections.natsops.fleet.plugins.module_utils.wire.streams import StreamReceiver, StreamSender


class FakeMsg:
    def __init__(self, subject, data, reply, headers):
        self.subject, self.data, self.reply, self.headers = subject, data, reply, headers


class FakeSub:
    def __init__(self, nc, pattern):
        self.nc, self.pattern = nc, pattern

    async def unsubscribe(self):
        self.nc.subs.pop(self.pattern, None)


class FakeNC:
    """Routes publishes to subscribers; 'pattern.*' matches one more token. Tracks published messages."""

    def __init__(self, drop_seq=None):
        self.subs = {}
        self.counter = itertools.count()
        self.published = []
        self.drop_seq = drop_seq

    def new_inbox(self):
        return "_INBOX.%d" % next(self.counter)

    async def subscribe(self, subject, cb):
        self.subs[subject] = cb
        return FakeSub(self, subject)

    async def publish(self, subject, data, reply="", headers=None):
        self.published.append((subject, headers))
        if headers and self.drop_seq is not None and headers.get(c.H_SEQ) == str(self.drop_seq):
            return
        target = self.subs.get(subject) or self.subs.get(subject.rsplit(".", 1)[0] + ".*")
        if target is None:
            if reply:  # like nats-server: no responders
                await self.publish(reply, b"", headers={c.H_STATUS: "503"})
            return
        asyncio.get_running_loop().call_soon(asyncio.ensure_future, target(FakeMsg(subject, bytes(data), reply, headers)))


def run(coro):
    return asyncio.run(coro)


def test_ordered_delivery_with_a_small_window():
    async def scenario():
        nc = FakeNC()
        receiver = await StreamReceiver(nc).start()
        sender = await StreamSender(nc, receiver.subject, window=2, ack_timeout=2).start()
        payload = bytes(range(256)) * 100

        async def consume():
            got = bytearray()
            while True:
                msg = await receiver.get(2)
                if msg.kind == c.KIND_RESULT:
                    return bytes(got)
                got.extend(msg.data)

        consumer = asyncio.ensure_future(consume())
        for offset in range(0, len(payload), 1000):
            await sender.send(c.KIND_DATA, attachment=payload[offset:offset + 1000])
        await sender.send(c.KIND_RESULT, {"ok": True})
        await sender.drain()
        assert await consumer == payload
        assert sender.sent == len(range(0, len(payload), 1000)) + 1
    run(scenario())


def test_window_blocks_until_acknowledged():
    async def scenario():
        nc = FakeNC()
        receiver = await StreamReceiver(nc).start()
        sender = await StreamSender(nc, receiver.subject, window=2, ack_timeout=0.3).start()
        await sender.send(c.KIND_DATA, attachment=b"1")
        await sender.send(c.KIND_DATA, attachment=b"2")
        with pytest.raises(c.WireError) as info:  # nobody takes messages: the third send times out
            await sender.send(c.KIND_DATA, attachment=b"3")
        assert info.value.code == c.E_ABORTED
    run(scenario())


def test_receiver_detects_a_lost_message():
    async def scenario():
        nc = FakeNC(drop_seq=2)
        receiver = await StreamReceiver(nc).start()
        sender = await StreamSender(nc, receiver.subject, window=4, ack_timeout=1).start()
        for part in (b"a", b"b", b"c"):
            await sender.send(c.KIND_DATA, attachment=part)
        assert (await receiver.get(1)).data == b"a"
        with pytest.raises(c.WireError) as info:
            await receiver.get(1)
        assert info.value.code == c.E_STREAM
    run(scenario())


def test_sender_notices_the_receiver_is_gone():
    async def scenario():
        nc = FakeNC()
        sender = await StreamSender(nc, "_INBOX.nobody", window=4, ack_timeout=1).start()
        await sender.send(c.KIND_KEEPALIVE)
        await asyncio.sleep(0.05)
        with pytest.raises(c.WireError) as info:
            await sender.send(c.KIND_KEEPALIVE)
        assert "went away" in info.value.message
    run(scenario())


def test_receiver_times_out_in_silence():
    async def scenario():
        receiver = await StreamReceiver(FakeNC()).start()
        with pytest.raises(asyncio.TimeoutError):
            await receiver.get(0.05)
        await receiver.close()
    run(scenario())
