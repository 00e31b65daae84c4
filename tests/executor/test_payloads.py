# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Payload by digest on the executor: the content-addressed cache (bounds, eviction, verification), the whole stdin
put back together, and the exec handler refusing a range it does not have before anything is accepted or run."""

from __future__ import annotations

import hashlib
import json
from typing import Any, List, Optional

import pytest

from natsops_executor import config, payloads
from natsops_executor._wire.contract import E_CHECKSUM_MISMATCH, E_PAYLOAD_MISSING, WireError, unpack
from natsops_executor._wire.messages import MAX_STDIN_BLOB, Digest, ExecRequest, ExecutorRef, StdinBlob
from natsops_executor.service import Executor, _Job, _Seen
from natsops_executor.trust import ReplySigner

MIB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blob(stdin: bytes, offset: int, size: int, sent: bool) -> StdinBlob:
    return StdinBlob(offset=offset, size=size, sha256=_sha(stdin[offset:offset + size]), sent=sent)


def test_the_cache_keeps_only_bytes_whose_digest_is_their_name():
    cache = payloads.PayloadCache(MAX_STDIN_BLOB)
    assert cache.put(_sha(b"zip"), b"zip") and _sha(b"zip") in cache
    with pytest.raises(WireError) as info:
        cache.put(_sha(b"zip"), b"zap")
    assert info.value.code == E_CHECKSUM_MISMATCH
    with pytest.raises(WireError):
        cache.put(_sha(b"other"), b"not other")
    assert _sha(b"other") not in cache and cache.stats()["payload_cached_bytes"] == 3


def test_the_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used():
    cache = payloads.PayloadCache(MAX_STDIN_BLOB)
    third = MAX_STDIN_BLOB // 3
    a, b, c, d = (bytes([n]) * third for n in range(4))
    for data in (a, b, c):
        assert cache.put(_sha(data), data)
    cache.take([StdinBlob(offset=0, size=third, sha256=_sha(a), sent=False)])  # a is used: b is now the oldest
    assert cache.put(_sha(d), d)
    assert [_sha(x) in cache for x in (a, b, c, d)] == [True, False, True, True]
    stats = cache.stats()
    assert stats["payload_cached_bytes"] == 3 * third <= MAX_STDIN_BLOB and stats["payload_evictions"] == 1
    assert stats["payload_cached_blobs"] == 3


def test_what_does_not_fit_is_not_kept_and_capacity_zero_keeps_nothing():
    big = b"x" * (MAX_STDIN_BLOB + 1)
    assert not payloads.PayloadCache(4 * MAX_STDIN_BLOB).put(_sha(big), big)
    off = payloads.PayloadCache(0)
    assert not off.put(_sha(b"zip"), b"zip") and _sha(b"zip") not in off
    with pytest.raises(WireError) as info:
        off.take([StdinBlob(offset=0, size=3, sha256=_sha(b"zip"), sent=False)])
    assert info.value.details["capacity"] == 0


def test_take_lists_every_missing_digest_and_counts_hits_and_bytes_saved():
    cache = payloads.PayloadCache(MAX_STDIN_BLOB)
    cache.put(_sha(b"here"), b"here")
    here = StdinBlob(offset=0, size=4, sha256=_sha(b"here"), sent=False)
    gone = [StdinBlob(offset=10 * n, size=4, sha256=_sha(b"gone%d" % n), sent=False) for n in (1, 2)]
    with pytest.raises(WireError) as info:
        cache.take([here] + gone)
    assert info.value.code == E_PAYLOAD_MISSING
    assert info.value.details["missing"] == sorted(b.sha256 for b in gone)
    assert cache.stats()["payload_misses"] == 2 and cache.stats()["payload_hits"] == 0
    sent_along = StdinBlob(offset=20, size=4, sha256=_sha(b"gone1"), sent=True)  # sent: never looked up
    assert cache.take([here, sent_along]) == {here.sha256: b"here"}
    assert (cache.hits, cache.bytes_saved) == (1, 4)


def test_assemble_puts_the_cached_ranges_back_where_they_were_left_out():
    stdin = b"#!python\nA=1\nzip_data='" + b"Z" * 100 + b"',\nparams='" + b"P" * 50 + b"'\n"
    zip_at, params_at = stdin.index(b"Z"), stdin.index(b"P")
    blobs = [_blob(stdin, zip_at, 100, sent=False), _blob(stdin, params_at, 50, sent=True)]
    sent = stdin[:zip_at] + stdin[zip_at + 100:]
    assert payloads.assemble(blobs, sent, {blobs[0].sha256: b"Z" * 100}) == stdin
    first_and_last = [_blob(stdin, 0, 9, sent=False), _blob(stdin, len(stdin) - 2, 2, sent=False)]
    cached = {b.sha256: stdin[b.offset:b.end()] for b in first_and_last}
    assert payloads.assemble(first_and_last, stdin[9:-2], cached) == stdin
    assert payloads.assemble(None, b"as is", {}) == b"as is"


# ---------------------------------------------------------------- the exec handler


class _Msg:
    """The request's NATS message: keeps the reply (acceptance or error)."""

    def __init__(self) -> None:
        self.replies: List[Any] = []

    async def respond(self, body: bytes, headers: Optional[dict] = None) -> None:
        self.replies.append(unpack(headers, body)[0])


class _NC:
    max_payload = MIB


def _stdin() -> bytes:
    return b"#!/usr/bin/python3\nwrapper()\n_ansiballz_main(zip_data='" + b"QUJD" * 20000 + b"', params='{}')\n"


def _job(stdin: bytes, sender: Any, sent: bool, attachment: Optional[bytes] = None) -> _Job:
    offset = stdin.index(b"QUJD")
    blob = _blob(stdin, offset, 80000, sent)
    req = ExecRequest.new("_INBOX.test", command="cat", stdin=Digest.of(stdin), stdin_blobs=[blob])
    if attachment is None:
        attachment = stdin if sent else stdin[:offset] + stdin[offset + 80000:]
    executor = ExecutorRef(name="test", service_id="S", version="0")
    job = _Job(_NC(), _Msg(), req, attachment, executor, ReplySigner(None, req.id), _Seen(None))
    job.sender = sender
    return job


async def _run(executor: Executor, job: _Job) -> List[Any]:
    """The handler's outcome: its error, or the job's replies."""
    await executor._exec(job, executor.local)  # pylint: disable=protected-access
    return job.msg.replies


async def test_exec_keeps_a_sent_range_and_runs_the_next_one_from_the_cache(sender):
    executor = Executor(config.load(["--instance", "web1", "--no-warm"], environ={}))
    stdin = _stdin()
    first = _job(stdin, sender, sent=True)
    await _run(executor, first)
    assert sender.data("stdout") == stdin and first.info["bytes_in"] == len(stdin)
    assert executor.payloads.stats()["payload_cached_blobs"] == 1

    sender.events.clear()
    second = _job(stdin, sender, sent=False)
    assert len(second.attachment) == len(stdin) - 80000
    await _run(executor, second)
    assert sender.data("stdout") == stdin  # the command read the whole stdin, byte for byte
    stats = executor.payloads.stats()
    assert (stats["payload_hits"], stats["payload_misses"], stats["payload_bytes_saved"]) == (1, 0, 80000)
    assert "payload_hits" in executor._stats(None)  # pylint: disable=protected-access


async def test_a_range_not_in_the_cache_is_refused_before_acceptance_and_nothing_runs(sender, tmp_path):
    executor = Executor(config.load(["--instance", "web1", "--no-warm"], environ={}))
    marker = tmp_path / "ran"
    stdin = _stdin()
    job = _job(stdin, sender, sent=False)
    job.req = ExecRequest.from_dict(dict(job.req.to_dict(), command="touch %s; cat" % marker))
    with pytest.raises(WireError) as info:
        await _run(executor, job)
    assert info.value.code == E_PAYLOAD_MISSING and info.value.details["missing"] == [job.req.stdin_blobs[0].sha256]
    assert not job.accepted and job.msg.replies == [] and sender.events == [] and not marker.exists()
    assert executor.payloads.stats()["payload_misses"] == 1


async def test_a_sent_range_that_is_not_what_its_digest_says_is_refused_and_not_kept(sender, tmp_path):
    executor = Executor(config.load(["--instance", "web1", "--no-warm"], environ={}))
    stdin = _stdin()
    job = _job(stdin, sender, sent=True)
    lie = dict(job.req.stdin_blobs[0].to_dict(), sha256=_sha(b"something else"))
    job.req = ExecRequest.from_dict(dict(job.req.to_dict(), stdin_blobs=[lie]))
    with pytest.raises(WireError) as info:
        await _run(executor, job)
    assert info.value.code == E_CHECKSUM_MISMATCH and sender.data("stdout") == b""
    assert executor.payloads.stats()["payload_cached_blobs"] == 0


async def test_cached_bytes_never_run_under_another_stdin_digest(sender):
    executor = Executor(config.load(["--instance", "web1", "--no-warm"], environ={}))
    stdin = _stdin()
    await _run(executor, _job(stdin, sender, sent=True))
    sender.events.clear()
    job = _job(stdin, sender, sent=False, attachment=None)
    other = stdin.replace(b"wrapper()", b"wrapped()")  # same size, other bytes
    job.req = ExecRequest.from_dict(dict(job.req.to_dict(), stdin=Digest.of(other).to_dict()))
    with pytest.raises(WireError) as info:  # the whole stdin must be what the (signed) request announces
        await _run(executor, job)
    assert info.value.code == E_CHECKSUM_MISMATCH and sender.data("stdout") == b""
    assert json.loads(json.dumps(executor.payloads.stats()))["payload_hits"] == 1


def test_the_cache_size_is_an_option_zero_or_at_least_one_blob():
    assert config.load(["--instance", "web1"], environ={}).payload_cache == payloads.DEFAULT_CAPACITY
    assert config.load(["--instance", "web1"], environ={"NATSOPS_PAYLOAD_CACHE": "0"}).payload_cache == 0
    assert config.load(["--instance", "web1", "--payload-cache", str(64 * MIB)], environ={}).payload_cache == 64 * MIB
    with pytest.raises(config.ConfigError, match="payload_cache must be 0"):
        config.load(["--instance", "web1", "--payload-cache", str(MIB)], environ={})
    assert Executor(config.load(["--instance", "web1", "--payload-cache", "0"], environ={})).payloads.capacity == 0
