# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The transfer operation: place a JetStream Object Store object, or a file of the executor host, at a path of
a host (hosts/: the executor's own, or an SSH target).

Checksum-idempotent: the destination's SHA-256 (and mode, when asked for) is compared first and nothing is
fetched or written when it already matches; ``check`` only reports. Content is verified against the source's
digest before it lands, and lands through the host's Landing (temp file + rename).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional

from natsops_executor import jobs
from natsops_executor._wire.contract import (
    E_CHECKSUM_MISMATCH, E_NOT_FOUND, KIND_KEEPALIVE, KIND_RESULT, WireError, object_digest_hex, sha256_of,
)
from natsops_executor._wire.messages import Digest, FileState, FileSummary, Source, TransferRequest, TransferResult
from natsops_executor._wire.streams import StreamSender
from natsops_executor.hosts.base import Host, os_error, run_blocking
from natsops_executor.hosts.local import open_regular_file

_BLOCK = 1 << 20


class _Content:
    """What to place: an Object Store object or a file of this host, with its digest and size."""

    def __init__(self, nc: Any, spec: Source) -> None:
        self.nc = nc
        self.spec = spec
        self.store: Any = None
        self.sha256: Optional[str] = None
        self.size: Optional[int] = None

    async def resolve(self) -> None:
        spec = self.spec
        if spec.object is None:
            fd, st = open_regular_file(spec.path or "", "the source on the executor host ")
            try:
                with os.fdopen(fd, "rb") as handle:
                    self.sha256 = await run_blocking(sha256_of, handle)
            except OSError as exc:
                raise os_error(exc, "cannot read the source %s on the executor host" % spec.path) from exc
            self.size = st.st_size
            return
        import nats.js.errors  # pylint: disable=import-outside-toplevel
        try:
            self.store = await self.nc.jetstream().object_store(spec.bucket)
            info = await self.store.get_info(spec.object)
        except nats.js.errors.NotFoundError:
            raise WireError(E_NOT_FOUND, "object %r is not in the Object Store bucket %r" % (spec.object, spec.bucket),
                            {"bucket": spec.bucket, "object": spec.object}) from None
        self.sha256 = object_digest_hex(info.digest)
        self.size = info.size

    async def write_into(self, write: jobs.Write) -> None:
        """Pass the content to ``write``, verified against the digest."""
        digest = Digest()

        class _Tee:
            @staticmethod
            def write(data: bytes) -> None:
                digest.update(data)
                write(data)

        if self.store is not None:
            import nats.js.errors  # pylint: disable=import-outside-toplevel
            try:
                await self.store.get(self.spec.object, writeinto=_Tee())
            except nats.js.errors.DigestMismatchError:
                raise WireError(E_CHECKSUM_MISMATCH, "object %r failed its digest check; nothing was written"
                                % self.spec.object) from None
        else:
            def copy() -> None:
                fd, _st = open_regular_file(self.spec.path or "", "the source on the executor host ")
                with os.fdopen(fd, "rb") as src:
                    for block in iter(lambda: src.read(_BLOCK), b""):
                        _Tee.write(block)
            await run_blocking(copy)
        if digest.hexdigest() != self.sha256:
            raise WireError(E_CHECKSUM_MISMATCH, "the source changed while it was copied (sha256 %s, expected %s); "
                                                 "nothing was written" % (digest.hexdigest(), self.sha256))


async def _place(host: Host, req: TransferRequest, content: _Content, current: Optional[FileState]) -> None:
    mode = req.mode if req.mode is not None else (current.mode if current else 0o644)
    if current and current.sha256 == content.sha256:
        await host.chmod(req.path, mode)
        return
    landing = await host.landing(req.path)
    try:
        await jobs.receive_file(landing, FileSummary(size=content.size, sha256=content.sha256), mode, content.write_into)
    finally:
        await landing.discard()


async def _transfer(host: Host, nc: Any, req: TransferRequest) -> TransferResult:
    content = _Content(nc, req.source)
    if req.check and req.sha256:
        content.sha256 = req.sha256  # check mode: the caller has not uploaded yet; judge by the content it would
    else:
        await content.resolve()
    if req.sha256 and req.sha256 != content.sha256:
        raise WireError(E_CHECKSUM_MISMATCH, "the source's sha256 is %s but the caller expects %s; nothing was written"
                        % (content.sha256, req.sha256))
    current = await host.state(req.path)
    changed = (current is None or current.sha256 != content.sha256
               or (req.mode is not None and current.mode != req.mode))
    result = TransferResult(changed=changed, sha256=content.sha256, size=content.size, path=req.path, before=current)
    if changed and not req.check:
        await _place(host, req, content, current)
    return result


async def run_transfer(host: Host, nc: Any, req: TransferRequest, sender: StreamSender) -> TransferResult:
    """Do the transfer, keeping the caller's liveness timer fed, then send the result."""
    work = asyncio.ensure_future(_transfer(host, nc, req))
    try:
        while True:
            done, _pending = await asyncio.wait({work}, timeout=req.keepalive)
            if done:
                break
            await sender.send(KIND_KEEPALIVE)
    finally:
        if not work.done():
            work.cancel()
    result = work.result()
    await sender.send(KIND_RESULT, result.to_dict())
    return result
