# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files arrive complete or not at all: the one implementation, used by both ends
(the executor for put, the caller for fetch). Standard library only."""

from __future__ import annotations

import os
from typing import Optional

from .messages import Digest, FileSummary


class AtomicFile:
    """A temp file beside ``path``: bytes are written and hashed, then commit() renames it over
    ``path`` (after fsync and chmod) or discard() removes it. Raises OSError from the file system."""

    def __init__(self, path: str) -> None:
        self.path = path
        parent = os.path.dirname(path) or "/"
        name = ".%s.natsops-%d-%s.tmp" % (os.path.basename(path)[:64], os.getpid(), os.urandom(4).hex())
        self.temp: Optional[str] = os.path.join(parent, name)
        self._fd: Optional[int] = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._digest = Digest()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        self._digest.update(view)  # type: ignore[arg-type]
        while view:
            view = view[os.write(self._fd, view):]  # type: ignore[arg-type]

    def summary(self) -> FileSummary:
        """Size and SHA-256 of what was written."""
        return self._digest.summary()

    def commit(self, mode: Optional[int] = None) -> None:
        """fsync, apply ``mode`` (exactly, when given), rename into place."""
        os.fsync(self._fd)  # type: ignore[arg-type]
        if mode is not None:
            os.fchmod(self._fd, mode)  # type: ignore[arg-type]
        os.close(self._fd)  # type: ignore[arg-type]
        self._fd = None
        os.rename(self.temp, self.path)  # type: ignore[arg-type]
        self.temp = None

    def discard(self) -> None:
        """Remove the temp file (no-op after commit)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.temp is not None:
            try:
                os.unlink(self.temp)
            except OSError:
                pass
            self.temp = None
