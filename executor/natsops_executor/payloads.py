# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Payload by digest: the bytes of exec stdin ranges (``stdin_blobs``) kept by their SHA-256.

A pipelined Ansible module run sends the module's zip (base64, 0.1-1 MB) in its stdin, byte-identical for every
run of that module. A caller names that range by digest; when this executor has the bytes, the caller leaves them
out of what it sends. ``PayloadCache`` holds them: bounded by bytes, least recently used first out, and only
bytes whose SHA-256 is the name they are kept under (so a digest always means the same bytes, whoever sent
them). ``assemble`` rebuilds the whole stdin; the service then checks it against the request's signed ``stdin``
summary, exactly as when every byte is sent.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Dict, List, Optional, Sequence

from natsops_executor._wire.contract import E_CHECKSUM_MISMATCH, E_PAYLOAD_MISSING, E_SIZE_MISMATCH, WireError
from natsops_executor._wire.messages import MAX_STDIN_BLOB, StdinBlob

DEFAULT_CAPACITY = 32 * 1024 * 1024   # bytes kept (a module's payload is 0.1-1 MB)
MAX_CAPACITY = 1 << 30


class PayloadCache:
    """Content-addressed bytes, at most ``capacity`` of them (0: nothing is kept, every named range misses)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._blobs: "collections.OrderedDict[str, bytes]" = collections.OrderedDict()
        self.size = 0
        self.hits = 0
        self.misses = 0
        self.bytes_saved = 0
        self.evictions = 0

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._blobs

    def take(self, blobs: Optional[Sequence[StdinBlob]]) -> Dict[str, bytes]:
        """The cached bytes of every range the caller left out, by digest (held by the job from now on, so an
        eviction while it uploads the rest cannot take them away). One missing: ``payload_missing`` listing every
        missing digest, raised before the job is accepted: nothing ran, the caller sends them."""
        wanted = [b for b in blobs or () if not b.sent]
        missing = sorted({b.sha256 for b in wanted if b.sha256 not in self._blobs})
        if missing:
            self.misses += len(missing)
            raise WireError(E_PAYLOAD_MISSING, "%d stdin range(s) named by digest are not in this executor's payload "
                            "cache (evicted, restarted, or another executor of the instance id); nothing was run: send "
                            "them" % len(missing), {"missing": missing, "capacity": self.capacity})
        found: Dict[str, bytes] = {}
        for blob in wanted:
            self._blobs.move_to_end(blob.sha256)
            found[blob.sha256] = self._blobs[blob.sha256]
            self.hits += 1
            self.bytes_saved += blob.size
        return found

    def put(self, sha256: str, data: bytes) -> bool:
        """Keep ``data`` under its digest; False (nothing kept) when it does not fit. Raises ``checksum_mismatch``
        when the bytes are not what the digest names."""
        if hashlib.sha256(data).hexdigest() != sha256:
            raise WireError(E_CHECKSUM_MISMATCH, "a stdin range's sha256 differs from the one its request names; "
                                                 "nothing was run")
        if sha256 in self._blobs:
            self._blobs.move_to_end(sha256)
            return True
        if len(data) > min(self.capacity, MAX_STDIN_BLOB):
            return False
        while self.size + len(data) > self.capacity:
            _digest, old = self._blobs.popitem(last=False)
            self.size -= len(old)
            self.evictions += 1
        self._blobs[sha256] = data
        self.size += len(data)
        return True

    def keep(self, blobs: Optional[Sequence[StdinBlob]], stdin: bytes) -> None:
        """Verify and keep the ranges the caller sent (``sent: true``) from the whole, verified, stdin."""
        for blob in blobs or ():
            if blob.sent:
                self.put(blob.sha256, stdin[blob.offset:blob.end()])

    def stats(self) -> Dict[str, int]:
        return {"payload_hits": self.hits, "payload_misses": self.misses, "payload_bytes_saved": self.bytes_saved,
                "payload_cached_bytes": self.size, "payload_cached_blobs": len(self._blobs),
                "payload_evictions": self.evictions, "payload_capacity": self.capacity}


def assemble(blobs: Optional[Sequence[StdinBlob]], sent: bytes, cached: Dict[str, bytes]) -> bytes:
    """The whole stdin: the bytes sent with the cached ranges put back where the request says they were left out.
    The caller of this function checks the result against the request's ``stdin`` summary."""
    if not blobs:
        return sent
    parts: List[bytes] = []
    position = 0       # in the whole stdin
    taken = 0          # of the bytes sent
    for blob in blobs:
        if blob.sent:
            continue
        step = blob.offset - position
        parts.append(sent[taken:taken + step])
        parts.append(cached[blob.sha256])
        taken += step
        position = blob.end()
    parts.append(sent[taken:])
    whole = b"".join(parts)
    if len(whole) != len(sent) + sum(b.size for b in blobs if not b.sent):
        raise WireError(E_SIZE_MISMATCH, "stdin reassembled from the bytes sent and the cached ranges has the wrong "
                                         "size; nothing was run")
    return whole
