# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The executor against hostile input on a real NATS: stored bytes replayed by JetStream, special files, prompts
that would cost a backtracking regular expression, and thousands of malformed requests. Every refusal is
explained, nothing runs that should not, and a concurrent caller is never held up."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

import devenv
from ansible_collections.natsops.fleet.plugins.module_utils.client import AsyncExecutorClient, ExecutorTaskError
from ansible_collections.natsops.fleet.plugins.module_utils.wire import contract

INSTANCE = "hostile"
FUZZ_REQUESTS = 10000
FUZZ_SECONDS = 240          # bound on the whole fuzz run
LATENCY_LIMIT = 1.0         # a concurrent `true` must finish within this, whatever the fuzz does


@pytest.fixture(scope="module")
def hostile_executor(nats_server, tmp_path_factory):
    proc = devenv.ExecutorProcess(nats_server.url, [INSTANCE], log_dir=str(tmp_path_factory.mktemp("hostile")))
    yield proc
    proc.stop()


def _run(coro):
    return asyncio.run(coro)


def _request_body(doc):
    return contract.pack(contract.KIND_REQUEST, doc)


async def _true_latency(client):
    started = time.monotonic()
    rc, _out, _err = await client.exec_command(command="true")
    assert rc == 0
    return time.monotonic() - started


def test_a_jetstream_delivery_never_runs(nats_server, hostile_executor, tmp_path):
    marker = tmp_path / "ran"
    subj = contract.subject("natsops", "exec", INSTANCE)

    async def scenario():
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="STORED", subjects=["stored.>"])
            doc = {"v": contract.PROTOCOL_VERSION, "op": "exec", "id": "stored", "reply_to": "_INBOX.attacker",
                   "command": "touch %s" % marker}
            headers, body = _request_body(doc)
            await js.publish("stored.request", body, headers=headers)
            # a push consumer whose deliveries land on the executor's own subject, in its queue group
            await js.add_consumer("STORED", ConsumerConfig(durable_name="attack", deliver_subject=subj,
                                                           deliver_group=contract.QUEUE_GROUP,
                                                           deliver_policy=DeliverPolicy.ALL))
            await asyncio.sleep(2)
            info = await js.consumer_info("STORED", "attack")
            client = AsyncExecutorClient(nc, INSTANCE)
            assert await _true_latency(client) < LATENCY_LIMIT  # the executor still serves real callers
            await js.delete_stream("STORED")
            return info
        finally:
            await nc.close()

    info = _run(scenario())
    assert not marker.exists(), "a request replayed from a stream was run"
    assert info.delivered.stream_seq == 1 and info.num_pending == 0 and info.num_ack_pending == 0  # terminated
    assert "a JetStream delivery; terminated" in hostile_executor.output()


def test_special_files_are_refused_without_stalling_anyone(nats_server, hostile_executor, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    async def scenario():
        nc = await nats.connect(nats_server.url)
        try:
            client = AsyncExecutorClient(nc, INSTANCE)
            fetches = [asyncio.ensure_future(client.fetch_file(str(fifo), str(tmp_path / ("out%d" % i)))) for i in range(8)]
            checks = [asyncio.ensure_future(client.transfer(str(fifo), source_path="/etc/hostname", check=True))
                      for _i in range(8)]
            latency = await _true_latency(client)
            results = await asyncio.gather(*fetches, *checks, return_exceptions=True)
            return latency, results
        finally:
            await nc.close()

    latency, results = _run(scenario())
    assert latency < LATENCY_LIMIT
    for result in results:
        assert isinstance(result, ExecutorTaskError) and result.code == contract.E_BAD_PATH, result
        assert "not a regular file" in result.message


def test_a_prompt_that_would_backtrack_costs_nothing(nats_server, hostile_executor):
    async def scenario():
        nc = await nats.connect(nats_server.url)
        try:
            client = AsyncExecutorClient(nc, INSTANCE)
            become = {"success": "NEVER", "prompt_words": ["(a+)+$"], "password": "x", "timeout": 3}
            hostile = asyncio.ensure_future(client.exec_command(command="printf '%s\\n' aaaaaaaaaaaaaaaaaaaaaaaaaaa; sleep 5",
                                                                become=become))
            await asyncio.sleep(0.3)
            latency = await _true_latency(client)
            with pytest.raises(Exception):
                await hostile
            return latency
        finally:
            await nc.close()

    assert _run(scenario()) < LATENCY_LIMIT


def _valid(rng, reply_to):
    op = rng.choice(["exec", "put", "fetch", "transfer"])
    doc = {"v": contract.PROTOCOL_VERSION, "op": op, "id": "fuzz-%d" % rng.randrange(10 ** 9), "reply_to": reply_to}
    doc.update({"exec": {"command": "true"}, "put": {"path": "/nonexistent/x", "size": 1, "sha256": "a" * 64},
                "fetch": {"path": "/nonexistent/x"},
                "transfer": {"source": {"path": "/nonexistent/src"}, "path": "/nonexistent/x", "check": True}}[op])
    return op, doc


_HOSTILE_VALUES = [
    None, True, -1, 0, 10 ** 4000, -(10 ** 4000), 1e308, "", "x" * 70000, "a\x00b", "\ud800", "\udfff-tail", [], {},
    ["a", 1], {"a": 1}, {"a": "b\x00"}, [[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]], "../../etc/passwd", "/a/../b",
    "relative", "*", ">", "a.*.b", "a b", "_INBOX.\x07bell", "$JS.API.STREAM.DELETE.X", "natsops.exec.other",
]


def _mutate(rng, doc):
    """One field of a valid request replaced, removed or added, or the whole document broken."""
    doc = json.loads(json.dumps(doc))
    choice = rng.random()
    if choice < 0.5:
        key = rng.choice(sorted(doc))
        doc[key] = rng.choice(_HOSTILE_VALUES)
    elif choice < 0.6:
        doc.pop(rng.choice(sorted(doc)))
    elif choice < 0.7:
        doc[rng.choice(["become", "target", "stdin", "source", "env", "argv", "bogus"])] = rng.choice(_HOSTILE_VALUES + [
            {"success": "S", "prompt": "(a+)+$"}, {"host": "-oProxyCommand=x", "user": "r"}, {"size": 10 ** 4000, "sha256": "0"},
            {"A=B": "c"}, {"\ud800": "x"}, ["/bin/true\x00"]])
    elif choice < 0.8:
        doc["timeout"] = rng.choice([10 ** 4000, -1, float("1e308"), "5", True])
    else:
        raw = json.dumps(doc)
        return rng.choice([raw.replace('"', "", 1), "[" * 5000 + "]" * 5000, '{"a": NaN}', '{"a": Infinity}',
                           '{"command": "\\ud800"}', raw[:rng.randrange(len(raw))], "\xff\xfe", '{"v": ' + "9" * 4400 + "}",
                           json.dumps({"nest": json.loads("[" * 50 + "]" * 50)})]).encode("utf-8", "surrogatepass")
    return json.dumps(doc).encode("utf-8", "surrogatepass")


def test_thousands_of_malformed_requests_get_structured_errors(nats_server, hostile_executor):
    rng = random.Random(20261129)

    async def scenario():
        nc = await nats.connect(nats_server.url)
        try:
            client = AsyncExecutorClient(nc, INSTANCE)
            codes = {}
            latencies = []
            started = time.monotonic()
            reply_to = nc.new_inbox()
            for batch in range(FUZZ_REQUESTS // 100):
                assert time.monotonic() - started < FUZZ_SECONDS, "the fuzz run took too long"
                sends = []
                for _i in range(100):
                    op, doc = _valid(rng, reply_to)
                    headers = {contract.H_KIND: contract.KIND_REQUEST}
                    if rng.random() < 0.05:
                        headers[contract.H_JSON_LENGTH] = rng.choice(["-1", "x", "99999999", "0"])
                    sends.append(nc.request(contract.subject("natsops", op, INSTANCE), _mutate(rng, doc), timeout=10,
                                            headers=headers))
                if batch % 10 == 0:
                    latencies.append(asyncio.ensure_future(_true_latency(client)))
                for reply in await asyncio.gather(*sends):
                    if contract.kind_of(reply.headers) == contract.KIND_ACCEPTED:
                        codes["accepted"] = codes.get("accepted", 0) + 1
                        continue
                    doc, _attachment = contract.unpack(reply.headers, reply.data, max_json=len(reply.data) + 1)
                    codes[doc["code"]] = codes.get(doc["code"], 0) + 1
            return codes, [await latency for latency in latencies]
        finally:
            await nc.close()

    codes, latencies = _run(scenario())
    assert sum(codes.values()) == FUZZ_REQUESTS, codes  # every request was answered
    assert contract.E_INTERNAL not in codes, codes
    assert set(codes) <= {"accepted", contract.E_BAD_REQUEST, contract.E_BAD_JSON, contract.E_TOO_LARGE,
                          contract.E_UNSUPPORTED_VERSION, contract.E_NOT_FOUND, contract.E_BAD_PATH, contract.E_BAD_INSTANCE}, codes
    assert codes.get(contract.E_BAD_REQUEST, 0) > FUZZ_REQUESTS // 4, codes
    assert max(latencies) < LATENCY_LIMIT, latencies
    assert hostile_executor.proc.poll() is None
