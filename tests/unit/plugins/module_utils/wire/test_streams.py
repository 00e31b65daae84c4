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

    def __init__(self, drop_seq=None, drop_once=None, duplicate=None):
        self.subs = {}
        self.counter = itertools.count()
        self.published = []
        self.drop_seq = drop_seq
        self.drop_once = drop_once    # lose the first copy of this sequence number
        self.duplicate = duplicate    # deliver this sequence number twice

    def new_inbox(self):
        return "_INBOX.%d" % next(self.counter)

    async def subscribe(self, subject, cb):
        self.subs[subject] = cb
        return FakeSub(self, subject)

    async def publish(self, subject, data, reply="", headers=None):
        self.published.append((subject, headers))
        seq = (headers or {}).get(c.H_SEQ)
        if seq is not None and self.drop_seq is not None and seq == str(self.drop_seq):
            return
        if seq is not None and self.drop_once is not None and seq == str(self.drop_once):
            self.drop_once = None
            return
        target = self.subs.get(subject) or self.subs.get(subject.rsplit(".", 1)[0] + ".*")
        if target is None:
            if reply:  # like nats-server: no responders
                await self.publish(reply, b"", headers={c.H_STATUS: "503"})
            return
        copies = 2 if seq is not None and seq == str(self.duplicate) else 1
        for _copy in range(copies):
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
        sender = await StreamSender(nc, "_INBOX.nobody", window=4, ack_timeout=1, gone_grace=0).start()
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


def test_a_receiver_that_comes_back_gets_everything_once():
    """Its client reconnected to another server: for a moment nobody listens (503), then it is back."""
    async def scenario():
        nc = FakeNC()
        receiver = StreamReceiver(nc, "_INBOX.later")
        sender = await StreamSender(nc, receiver.subject, window=4, ack_timeout=5, gone_grace=3).start()
        for part in (b"a", b"b", b"c"):
            await sender.send(c.KIND_DATA, attachment=part)
        await asyncio.sleep(0.4)  # every one of them got a 503 so far
        await receiver.start()
        got = [(await receiver.get(3)).data for _part in range(3)]
        await sender.drain()
        await sender.close()
        return got, sender.resent
    got, resent = run(scenario())
    assert got == [b"a", b"b", b"c"] and resent >= 3


def test_a_lost_message_is_sent_again_and_duplicates_are_read_once():
    async def scenario():
        nc = FakeNC(drop_once=2, duplicate=3)
        receiver = await StreamReceiver(nc).start()
        sender = await StreamSender(nc, receiver.subject, window=4, ack_timeout=5).start()
        for part in (b"a", b"b", b"c", b"d"):
            await sender.send(c.KIND_DATA, attachment=part)
        got = [(await receiver.get(3)).data for _part in range(4)]
        await sender.drain()
        await sender.close()
        with pytest.raises(asyncio.TimeoutError):
            await receiver.get(0.2)  # the duplicate of c was acknowledged, not read again
        return got
    assert run(scenario()) == [b"a", b"b", b"c", b"d"]
