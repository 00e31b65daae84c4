# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ordered, acknowledged message streams over core NATS, used by both ends.

A stream carries the events of one job (output chunks, keepalives, the result) or
the bytes of one upload. The sender numbers every message (Natsops-Seq) and asks
for an acknowledgement on ``<ack inbox>.<seq>``; at most ``window`` messages are
unacknowledged, which gives back-pressure and bounded memory on both sides. The
receiver acknowledges a message only when its consumer takes it, checks that the
sequence has no gap, and so either gets every byte in order or an error.

Standard library only; ``nc`` is a connected nats-py client (duck-typed here so the
module imports without nats-py).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

from .contract import (
    DEFAULT_WINDOW, E_ABORTED, E_STREAM, H_STATUS, H_STREAM, KIND_ERROR, KIND_RESULT, WireError, kind_of, pack, parse_seq,
)


def private_inbox(nc: Any) -> str:
    """A fresh inbox no one can guess: the connection's inbox prefix and 128 random bits (nats-py's own inboxes
    count up from a shared prefix, so one seen inbox predicts the next)."""
    return "%s.%s" % (nc.new_inbox().rsplit(".", 1)[0], secrets.token_hex(16))


async def _unsubscribe(sub: Any) -> None:
    """Unsubscribe if subscribed; the connection may already be closed, then nothing is left to release."""
    if sub is not None:
        try:
            await sub.unsubscribe()
        except Exception:  # pylint: disable=broad-except
            pass
    return None


class StreamSender:
    """Publish an ordered stream to ``subject`` with a bounded window of unacknowledged messages.

    A message is kept until it is acknowledged. When the receiver's subject has no subscriber for a moment (its
    client reconnects to another server after a node failed: nats-server answers 503), the message is sent
    again shortly after, for up to ``gone_grace`` seconds before the peer counts as gone; a message whose
    acknowledgement does not come within ``RESEND_AFTER`` seconds (lost on the way, or its acknowledgement
    lost) is sent again too. The receiver takes each sequence number once, so a message sent twice is read once.
    """

    RESEND_AFTER = 1.0   # seconds without an acknowledgement before a message is sent again

    def __init__(self, nc: Any, subject: str, window: int = DEFAULT_WINDOW, ack_timeout: float = 30.0,
                 sign: Optional[Callable[[bytes], Dict[str, str]]] = None, gone_grace: float = 5.0) -> None:
        self._nc = nc
        self._sign = sign  # headers that sign the body of a final message (result or error)
        self.subject = subject
        self._window = asyncio.Semaphore(window)
        self._window_size = window
        self._ack_timeout = ack_timeout
        self._gone_grace = gone_grace
        self._seq = 0
        self._unacked: Dict[int, Tuple[Dict[str, str], bytes, float]] = {}  # seq -> (headers, body, last sent)
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._lock = asyncio.Lock()
        self._error: Optional[WireError] = None
        self._inbox: Optional[str] = None
        self._sub: Any = None
        self._gone_since: Optional[float] = None
        self._resender: Optional[asyncio.Future] = None
        self.resent = 0

    @property
    def sent(self) -> int:
        """How many messages were sent."""
        return self._seq

    async def start(self) -> "StreamSender":
        """Subscribe to the acknowledgements; returns self."""
        self._inbox = private_inbox(self._nc)
        self._sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_ack)
        self._resender = asyncio.ensure_future(self._resend_unacknowledged())
        return self

    async def _on_ack(self, msg: Any) -> None:
        try:
            seq = int(msg.subject.rsplit(".", 1)[1])
        except (IndexError, ValueError):
            return
        if msg.headers and msg.headers.get(H_STATUS) == "503":
            now = time.monotonic()
            if self._gone_since is None:
                self._gone_since = now
            if now - self._gone_since >= self._gone_grace:
                self._fail(WireError(E_ABORTED, "nobody listens on %s any more (the peer went away)" % self.subject))
            elif seq in self._unacked:
                headers, body, _sent = self._unacked[seq]
                self._unacked[seq] = (headers, body, now - self.RESEND_AFTER + 0.25)  # again in a quarter second
            return
        self._gone_since = None
        if self._unacked.pop(seq, None) is not None:
            self._window.release()
            if not self._unacked:
                self._all_acked.set()

    async def _resend_unacknowledged(self) -> None:
        while self._error is None:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for seq, (headers, body, sent) in sorted(self._unacked.items()):
                if now - sent >= self.RESEND_AFTER and seq in self._unacked:
                    self._unacked[seq] = (headers, body, now)
                    self.resent += 1
                    try:
                        await self._nc.publish(self.subject, body, reply="%s.%d" % (self._inbox, seq), headers=headers)
                    except Exception:  # pylint: disable=broad-except
                        break  # disconnected: the next round tries again

    def _fail(self, error: WireError) -> None:
        if self._error is None:
            self._error = error
        # wake every waiter so it sees the error
        for _waiter in range(self._window_size):
            self._window.release()
        self._all_acked.set()

    async def _within_ack_timeout(self, awaitable: Awaitable[Any]) -> None:
        try:
            await asyncio.wait_for(awaitable, self._ack_timeout)
        except asyncio.TimeoutError:
            self._fail(WireError(E_ABORTED, "the receiver on %s did not acknowledge for %.0f s"
                                 % (self.subject, self._ack_timeout)))

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    async def send(self, kind: str, document: Optional[Dict[str, Any]] = None, attachment: bytes = b"",
                   stream: Optional[str] = None) -> None:
        """Send one message; waits while the window is full. Raises WireError when the peer is gone."""
        self._check()
        await self._within_ack_timeout(self._window.acquire())
        self._check()
        async with self._lock:
            self._seq += 1
            seq = self._seq
            headers, body = pack(kind, document, attachment, seq=seq, stream=stream)
            if self._sign is not None and kind in (KIND_RESULT, KIND_ERROR):
                headers.update(self._sign(body))
            self._unacked[seq] = (headers, body, time.monotonic())
            self._all_acked.clear()
            await self._nc.publish(self.subject, body, reply="%s.%d" % (self._inbox, seq), headers=headers)

    async def drain(self) -> None:
        """Wait until every message sent so far is acknowledged."""
        await self._within_ack_timeout(self._all_acked.wait())
        self._check()

    async def close(self) -> None:
        if self._resender is not None:
            self._resender.cancel()
            self._resender = None
        self._sub = await _unsubscribe(self._sub)


class StreamMessage:
    """One received stream message: kind, stream name, raw headers and data."""

    __slots__ = ("kind", "stream", "headers", "data")

    def __init__(self, kind: str, stream: Optional[str], headers: Dict[str, str], data: bytes) -> None:
        self.kind = kind
        self.stream = stream
        self.headers = headers
        self.data = data


class StreamReceiver:
    """Receive an ordered stream on ``subject`` (a fresh inbox unless given).

    Messages are taken in sequence order. One sent again (the sender did not hear its acknowledgement) is
    acknowledged again and not read twice; one that arrives early waits for those before it. A gap that does not
    close is a stream error."""

    def __init__(self, nc: Any, subject: Optional[str] = None) -> None:
        self._nc = nc
        self.subject = subject or private_inbox(nc)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._early: Dict[int, Any] = {}
        self._expected = 1
        self._sub: Any = None

    async def start(self) -> "StreamReceiver":
        """Subscribe; returns self."""
        self._sub = await self._nc.subscribe(self.subject, cb=self._on_msg)
        return self

    async def _on_msg(self, msg: Any) -> None:
        self._queue.put_nowait(msg)

    async def _ack(self, msg: Any) -> None:
        if msg.reply:
            await self._nc.publish(msg.reply, b"")

    async def get(self, timeout: float) -> StreamMessage:
        """Next message in order. Raises asyncio.TimeoutError after ``timeout`` s of silence, WireError(stream_error)
        when a message is missing (later ones arrived, and it did not within ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._expected not in self._early:
            try:
                msg = await asyncio.wait_for(self._queue.get(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                if self._early:
                    raise WireError(E_STREAM, "stream message %d is missing on %s (later ones arrived): a message was "
                                              "lost" % (self._expected, self.subject)) from None
                raise
            seq = parse_seq(msg.headers)
            if seq < self._expected or seq in self._early:
                await self._ack(msg)  # sent again: the sender missed our acknowledgement
            elif len(self._early) > 4 * DEFAULT_WINDOW:
                raise WireError(E_STREAM, "stream message %d never arrived on %s while %d later ones did"
                                % (self._expected, self.subject, len(self._early)))
            else:
                self._early[seq] = msg
        msg = self._early.pop(self._expected)
        self._expected += 1
        await self._ack(msg)
        headers = msg.headers or {}
        return StreamMessage(kind_of(headers), headers.get(H_STREAM), headers, msg.data)

    async def close(self) -> None:
        self._sub = await _unsubscribe(self._sub)
