# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the executor package (natsops_executor, installed in the project's virtualenv): no NATS, no
network. The job code talks to a recording stand-in for its event stream."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import pytest


class RecordingSender:
    """Stands in for a StreamSender: keeps every event the job sends."""

    def __init__(self) -> None:
        self.events: List[Tuple[str, Any, bytes, Optional[str]]] = []

    async def send(self, kind: str, document: Any = None, attachment: bytes = b"", stream: Optional[str] = None) -> None:
        self.events.append((kind, document, bytes(attachment), stream))

    def data(self, stream: str) -> bytes:
        return b"".join(a for kind, _doc, a, s in self.events if kind == "data" and s == stream)

    def kinds(self) -> List[str]:
        return [kind for kind, _doc, _a, _s in self.events]


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()
