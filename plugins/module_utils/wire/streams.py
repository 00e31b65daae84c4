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
from typing import Any, Awaitable, Callable, Dict, Optional, Set

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
    """Publish an ordered stream to ``subject`` with a bounded window of unacknowledged messages."""

    def __init__(self, nc: Any, subject: str, window: int = DEFAULT_WINDOW, ack_timeout: float = 30.0,
                 sign: Optional[Callable[[bytes], Dict[str, str]]] = None) -> None:
        self._nc = nc
        self._sign = sign  # headers that sign the body of a final message (result or error)
        self.subject = subject
        self._window = asyncio.Semaphore(window)
        self._window_size = window
        self._ack_timeout = ack_timeout
        self._seq = 0
        self._outstanding: Set[int] = set()
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._lock = asyncio.Lock()
        self._error: Optional[WireError] = None
        self._inbox: Optional[str] = None
        self._sub: Any = None

    @property
    def sent(self) -> int:
        """How many messages were sent."""
        return self._seq

    async def start(self) -> "StreamSender":
        """Subscribe to the acknowledgements; returns self."""
        self._inbox = private_inbox(self._nc)
        self._sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_ack)
        return self

    async def _on_ack(self, msg: Any) -> None:
        if msg.headers and msg.headers.get(H_STATUS) == "503":
            self._fail(WireError(E_ABORTED, "nobody listens on %s any more (the peer went away)" % self.subject))
            return
        try:
            seq = int(msg.subject.rsplit(".", 1)[1])
        except (IndexError, ValueError):
            return
        if seq in self._outstanding:
            self._outstanding.discard(seq)
            self._window.release()
            if not self._outstanding:
                self._all_acked.set()

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
            self._outstanding.add(seq)
            self._all_acked.clear()
            await self._nc.publish(self.subject, body, reply="%s.%d" % (self._inbox, seq), headers=headers)

    async def drain(self) -> None:
        """Wait until every message sent so far is acknowledged."""
        await self._within_ack_timeout(self._all_acked.wait())
        self._check()

    async def close(self) -> None:
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
    """Receive an ordered stream on ``subject`` (a fresh inbox unless given)."""

    def __init__(self, nc: Any, subject: Optional[str] = None) -> None:
        self._nc = nc
        self.subject = subject or private_inbox(nc)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._expected = 1
        self._sub: Any = None

    async def start(self) -> "StreamReceiver":
        """Subscribe; returns self."""
        self._sub = await self._nc.subscribe(self.subject, cb=self._on_msg)
        return self

    async def _on_msg(self, msg: Any) -> None:
        self._queue.put_nowait(msg)

    async def get(self, timeout: float) -> StreamMessage:
        """Next message in order. Raises asyncio.TimeoutError after ``timeout`` s of silence,
        WireError(stream_error) when a message is missing or duplicated."""
        msg = await asyncio.wait_for(self._queue.get(), timeout)
        headers = msg.headers or {}
        seq = parse_seq(headers)
        if seq != self._expected:
            raise WireError(E_STREAM, "stream message %d arrived while %d was expected on %s: "
                                      "a message was lost or repeated" % (seq, self._expected, self.subject))
        self._expected += 1
        if msg.reply:
            await self._nc.publish(msg.reply, b"")
        return StreamMessage(kind_of(headers), headers.get(H_STREAM), headers, msg.data)

    async def close(self) -> None:
        self._sub = await _unsubscribe(self._sub)
