# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The transfer operation: place a JetStream Object Store object, or a file of the executor host, at a
path on the executor host or (SSH mode) on a target host.

Checksum-idempotent: the destination's SHA-256 (and mode, when asked for) is compared first and
nothing is fetched or written when it already matches; ``check`` only reports. Content is verified
against the object's digest before it lands, and lands through a temp file + rename.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import tempfile

from natsops_executor import jobs
from natsops_executor._wire.contract import (
    E_BAD_PATH, E_CHECKSUM_MISMATCH, E_IO, E_NOT_FOUND, KIND_KEEPALIVE, KIND_RESULT, WireError, object_digest_hex,
    sha256_of,
)

BLOCK = 1 << 20


def _local_state(path):
    """(sha256, mode) of a regular file here, or None when absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise jobs.os_error(exc, "cannot check %s" % path)
    if stat.S_ISDIR(st.st_mode):
        raise WireError(E_BAD_PATH, "destination %s is a directory" % path)
    try:
        with open(path, "rb") as handle:
            return sha256_of(handle), stat.S_IMODE(st.st_mode)
    except OSError as exc:
        raise jobs.os_error(exc, "cannot read %s" % path)


def _remote_state(sftp, path):
    try:
        st = sftp.stat(path)
    except IOError as exc:
        if getattr(exc, "errno", None) == 2:
            return None
        raise WireError(E_IO, "cannot check %s: %s" % (path, exc))
    if stat.S_ISDIR(st.st_mode):
        raise WireError(E_BAD_PATH, "destination %s is a directory" % path)
    with sftp.open(path, "rb") as handle:
        handle.prefetch(st.st_size)
        return sha256_of(handle), stat.S_IMODE(st.st_mode)


class _Source:
    """What to place: an Object Store object or a file of this host, with its digest and size."""

    def __init__(self, nc, spec):
        self.nc = nc
        self.spec = spec
        self.store = None
        self.sha256 = None
        self.size = None

    async def resolve(self):
        spec = self.spec
        if spec["object"] is None:
            loop = asyncio.get_running_loop()
            try:
                st = os.stat(spec["path"])
                if not stat.S_ISREG(st.st_mode):
                    raise WireError(E_BAD_PATH, "source %s is not a regular file" % spec["path"])
                with open(spec["path"], "rb") as handle:
                    self.sha256 = await loop.run_in_executor(None, sha256_of, handle)
                self.size = st.st_size
            except OSError as exc:
                raise jobs.os_error(exc, "cannot read the source %s on the executor host" % spec["path"])
            return
        import nats.js.errors  # pylint: disable=import-outside-toplevel
        try:
            self.store = await self.nc.jetstream().object_store(spec["bucket"])
            info = await self.store.get_info(spec["object"])
        except nats.js.errors.NotFoundError:
            raise WireError(E_NOT_FOUND, "object %r is not in the Object Store bucket %r" % (spec["object"], spec["bucket"]),
                            {"bucket": spec["bucket"], "object": spec["object"]})
        self.sha256 = object_digest_hex(info.digest)
        self.size = info.size

    async def write_into(self, handle):
        """Copy the content into ``handle`` (.write), verified against the digest."""
        digest = hashlib.sha256()

        class _Tee:
            @staticmethod
            def write(data):
                digest.update(data)
                handle.write(data)

        if self.store is not None:
            import nats.js.errors  # pylint: disable=import-outside-toplevel
            try:
                await self.store.get(self.spec["object"], writeinto=_Tee())
            except nats.js.errors.DigestMismatchError:
                raise WireError(E_CHECKSUM_MISMATCH, "object %r failed its digest check; nothing was written" % self.spec["object"])
        else:
            def copy():
                with open(self.spec["path"], "rb") as src:
                    for block in iter(lambda: src.read(BLOCK), b""):
                        _Tee.write(block)
            await asyncio.get_running_loop().run_in_executor(None, copy)
        if digest.hexdigest() != self.sha256:
            raise WireError(E_CHECKSUM_MISMATCH, "the source changed while it was copied (sha256 %s, expected %s); "
                                                 "nothing was written" % (digest.hexdigest(), self.sha256))


async def _place_local(req, source, current):
    path = req["path"]
    mode = req["mode"] if req["mode"] is not None else (current[1] if current else 0o644)
    if current and current[0] == source.sha256:
        os.chmod(path, mode)
        return
    target = jobs.open_put_target(path)
    try:
        await source.write_into(target)
        target.commit(mode)
    except OSError as exc:
        raise jobs.os_error(exc, "cannot write %s" % path)
    finally:
        target.discard()


async def _place_remote(pool, req, source, current):
    from natsops_executor import ssh  # pylint: disable=import-outside-toplevel
    path = req["path"]
    mode = req["mode"] if req["mode"] is not None else (current[1] if current else 0o644)
    async with pool.sftp_client(req["target"]) as sftp:
        if current and current[0] == source.sha256:
            await pool.run(sftp.chmod, path, mode)
            return
        await pool.run(ssh.check_put_target, sftp, path)
        with tempfile.TemporaryFile(prefix="natsops-transfer-") as spool:
            await source.write_into(spool)
            await pool.run(ssh.upload, sftp, spool, path, mode)


async def _current_remote(pool, target, path):
    async with pool.sftp_client(target) as sftp:
        return await pool.run(_remote_state, sftp, path)


async def _transfer(executor, req):
    source = _Source(executor.nc, req["source"])
    if req["check"] and req["sha256"]:
        source.sha256 = req["sha256"]  # check mode: the caller has not uploaded yet; judge by the content it would
    else:
        await source.resolve()
    if req["sha256"] and req["sha256"] != source.sha256:
        raise WireError(E_CHECKSUM_MISMATCH, "the source's sha256 is %s but the caller expects %s; nothing was written"
                        % (source.sha256, req["sha256"]))
    if req["target"]:
        current = await _current_remote(executor.ssh, req["target"], req["path"])
    else:
        current = await asyncio.get_running_loop().run_in_executor(None, _local_state, req["path"])
    changed = (current is None or current[0] != source.sha256
               or (req["mode"] is not None and current[1] != req["mode"]))
    result = {"changed": changed, "sha256": source.sha256, "size": source.size, "path": req["path"],
              "before": {"sha256": current[0], "mode": current[1]} if current else None}
    if changed and not req["check"]:
        if req["target"]:
            await _place_remote(executor.ssh, req, source, current)
        else:
            await _place_local(req, source, current)
    return result


async def run_transfer(executor, req, sender):
    """Do the transfer, keeping the caller's liveness timer fed, then send the result."""
    work = asyncio.ensure_future(_transfer(executor, req))
    try:
        while True:
            done, _pending = await asyncio.wait({work}, timeout=req["keepalive"])
            if done:
                break
            await sender.send(KIND_KEEPALIVE)
    finally:
        if not work.done():
            work.cancel()
    result = work.result()
    await sender.send(KIND_RESULT, result)
    return result
