# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible_collections.natsops.fleet.plugins.module_utils import _client as client
from ansible_collections.natsops.fleet.plugins.module_utils.wire.contract import WireError


def _executor(namespace, instances, host="h1"):
    return {"id": "X", "namespace": namespace, "instances": instances, "hostname": host, "version": "0.1.0"}


def test_no_responders_message_is_the_seed_incident_explained():
    text = client.no_responders_message("natsops.exec.管理网", "管理网", "natsops",
                                        [_executor("natsops", ["default"]), _executor("other", ["x"], "h2")],
                                        "nats://10.0.0.1:4222")
    assert "'管理网'" in text and "natsops.exec.管理网" in text and "nats://10.0.0.1:4222" in text
    assert "Instance ids online in namespace 'natsops': 'default'" in text
    assert "other namespaces: 'other': x" in text
    assert "Fix:" in text and "--instance '管理网'" in text


def test_no_responders_message_without_any_executor():
    text = client.no_responders_message("natsops.exec.a", "a", "natsops", [], "nats://x:1")
    assert "No executor is online in namespace 'natsops'" in text


def test_client_validates_names_before_connecting():
    with pytest.raises(WireError):
        client.ExecutorClient({}, "a.b")
    with pytest.raises(WireError):
        client.ExecutorClient({}, "ok", namespace="bad ns")


def test_serving_filters_namespace_and_instance():
    c = client.ExecutorClient({}, "zone")
    found = c.serving([_executor("natsops", ["zone"]), _executor("natsops", ["*"]), _executor("natsops", ["z2"]),
                       _executor("other", ["zone"])])
    assert [e["instances"] for e in found] == [["zone"], ["*"]]


def test_wire_errors_map_to_unreachable_or_failed():
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorError, ExecutorTaskError, ExecutorUnreachable
    from ansible_collections.natsops.fleet.plugins.module_utils.wire.contract import WireError
    auth = ExecutorError.from_wire(WireError("target_auth_failed", "refused", {"stage": "auth"}))
    assert isinstance(auth, ExecutorUnreachable) and auth.details == {"stage": "auth"}
    assert isinstance(ExecutorError.from_wire(WireError("timeout", "slow")), ExecutorTaskError)


def _core():
    return client.AsyncExecutorClient(None, "host-1", "natsops", 1.0, 5.0, "nats://127.0.0.1:4222")


def test_an_opt_out_of_warm_runs_is_sent_only_when_asked_and_dropped_for_an_older_executor(monkeypatch):
    import asyncio
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError
    sent = []

    async def older_executor(fields, stdin, on_output):  # pylint: disable=unused-argument
        sent.append(fields["warm"])
        if fields["warm"] is not None:
            raise ExecutorTaskError("bad_request", "exec: unknown field 'warm'", {"problems": ["exec: unknown field 'warm'"]})
        return 0, b"ok", b""

    core = _core()
    monkeypatch.setattr(core, "_exec", older_executor)
    assert asyncio.run(core.exec_command(command="true")) == (0, b"ok", b"")
    assert sent == [None]
    assert asyncio.run(core.exec_command(command="true", warm=False)) == (0, b"ok", b"")
    assert sent == [None, False, None]


def test_other_refusals_of_an_opt_out_are_not_retried(monkeypatch):
    import asyncio
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError
    sent = []

    async def refusing(fields, stdin, on_output):  # pylint: disable=unused-argument
        sent.append(fields["warm"])
        raise ExecutorTaskError("bad_request", "two problems", {"problems": ["exec: unknown field 'warm'", "exec: 'timeout' must be >= 0"]})

    core = _core()
    monkeypatch.setattr(core, "_exec", refusing)
    with pytest.raises(ExecutorTaskError):
        asyncio.run(core.exec_command(command="true", warm=False))
    assert sent == [False]


def _module_stdin(zip_b64=b"UEsDBA" * 4000, quote=b"'"):
    """A pipelined module run's stdin as ansible-core 2.19 sends it (shebang, wrapper, the call with the zip)."""
    return (b"#!/usr/bin/python3\n# wrapper\n" + b"x = 1\n" * 6000 + b"if __name__ == \"__main__\":\n    _ansiballz_main(\n"
            b"zip_data=" + quote + zip_b64 + quote + b",\nansible_module='ping',\n)\n")


def test_the_payload_zip_is_found_only_in_large_stdin_as_a_strict_literal():
    stdin = _module_stdin()
    offset, size = client._zip_range(stdin)
    assert stdin[offset:offset + size] == b"UEsDBA" * 4000 and stdin[offset - 1:offset] == b"'"
    assert client._zip_range(_module_stdin(quote=b'"')) is not None
    assert client._zip_range(_module_stdin(zip_b64=b"UEsDBA" * 10)) is None        # a few bytes: not worth a digest
    assert client._zip_range(_module_stdin(zip_b64=b"UEsD BA" * 4000)) is None      # not base64
    assert client._zip_range(_module_stdin().replace(b"',\nansible", b'",\nansible')) is None  # quotes differ
    assert client._zip_range(b"zip_data='" + b"A" * 8000 + b"'") is None            # small stdin is sent whole
    assert client._zip_range(b"x" * 40000 + b"my_zip_data='" + b"A" * 8000 + b"'") is None


def test_the_sent_part_leaves_out_exactly_the_ranges_not_sent():
    from ansible_collections.natsops.fleet.plugins.module_utils.wire.messages import StdinBlob
    stdin = b"0123456789abcdefghij"
    blobs = [StdinBlob(offset=2, size=3, sha256="a" * 64, sent=False), StdinBlob(offset=8, size=2, sha256="b" * 64, sent=True),
             StdinBlob(offset=15, size=5, sha256="c" * 64, sent=False)]
    assert client._sent_part(stdin, blobs) == b"01" + b"56789abcde"
    assert client._sent_part(stdin, None) == stdin


def test_the_payload_memory_is_bounded_per_instance_and_in_instances():
    memory = client.PayloadMemory(per_instance=2, instances=2)
    memory.sent(("ns", "a"), ["1", "2"])
    memory.sent(("ns", "a"), ["3"])
    assert [memory.has(("ns", "a"), d) for d in "123"] == [False, True, True]
    memory.sent(("ns", "b"), ["1"])
    memory.sent(("ns", "c"), ["1"])
    assert not memory.has(("ns", "a"), "3") and memory.has(("ns", "c"), "1")
    memory.forget(("ns", "c"), ["1"])
    assert not memory.has(("ns", "c"), "1")
    memory.unsupported(("ns", "b"))
    assert not memory.supported(("ns", "b")) and not memory.has(("ns", "b"), "1") and memory.supported(("ns", "c"))


def _stub_exec(core, monkeypatch, answer):
    """Replace the client's one exec request by ``answer(fields, sent_blobs)``; returns the log of what was sent."""
    import asyncio
    sent = []

    async def one_request(fields, stdin, on_output):  # pylint: disable=unused-argument
        blobs = [b.to_dict() for b in fields.get("stdin_blobs") or []]
        sent.append((fields.get("warm"), blobs))
        return answer(fields, blobs)

    monkeypatch.setattr(core, "_exec", one_request)
    return sent, lambda **kw: asyncio.run(core.exec_command(command="/usr/bin/python3", stdin=_module_stdin(), **kw))


def test_a_module_payload_is_sent_once_then_named_by_digest(monkeypatch):
    core = _core()
    sent, run = _stub_exec(core, monkeypatch, lambda fields, blobs: (0, b"ok", b""))
    assert run() == run() == (0, b"ok", b"")
    assert [b["sent"] for _warm, blobs in sent for b in blobs] == [True, False]
    assert sent[0][1][0]["sha256"] == sent[1][1][0]["sha256"]
    other = client.AsyncExecutorClient(None, "host-2", "natsops", 1.0, 5.0, payloads=core.payloads)
    sent2, run2 = _stub_exec(other, monkeypatch, lambda fields, blobs: (0, b"ok", b""))
    run2()
    assert sent2[0][1][0]["sent"] is True  # another instance id's executors have not seen it


def test_a_payload_the_executor_lost_is_sent_again_once(monkeypatch):
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError
    core = _core()

    def evicted(fields, blobs):  # pylint: disable=unused-argument
        if not blobs[0]["sent"]:
            raise ExecutorTaskError("payload_missing", "not here", {"missing": [blobs[0]["sha256"]], "capacity": 1 << 25})
        return 0, b"ok", b""

    sent, run = _stub_exec(core, monkeypatch, evicted)
    run()
    core.payloads.sent(("natsops", "host-1"), [sent[0][1][0]["sha256"]])
    assert run() == (0, b"ok", b"")
    assert [blobs[0]["sent"] for _w, blobs in sent] == [True, False, True]
    assert core.payloads.has(("natsops", "host-1"), sent[0][1][0]["sha256"])

    def always_missing(fields, blobs):  # pylint: disable=unused-argument
        raise ExecutorTaskError("payload_missing", "not here", {"missing": [blobs[0]["sha256"]], "capacity": 1 << 25})

    sent, run = _stub_exec(core, monkeypatch, always_missing)
    with pytest.raises(ExecutorTaskError):
        run()
    assert len(sent) == 2  # sent again once, never in a loop


def test_an_executor_without_the_payload_cache_gets_everything_from_then_on(monkeypatch):
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError
    core = _core()

    def older(fields, blobs):
        unknown = ["exec: unknown field %r" % name for name in ("warm", "stdin_blobs") if fields.get(name) is not None]
        if unknown:  # what an executor before payloads by digest (and before warm) answers: nothing ran
            raise ExecutorTaskError("bad_request", "; ".join(unknown), {"problems": unknown})
        return 0, b"ok", b""

    sent, run = _stub_exec(core, monkeypatch, older)
    assert run(warm=False) == (0, b"ok", b"")
    assert run() == (0, b"ok", b"")
    assert [(warm, len(blobs)) for warm, blobs in sent] == [(False, 1), (None, 0), (None, 0)]
    assert not core.payloads.supported(("natsops", "host-1"))


def test_other_refusals_of_a_payload_by_digest_are_not_retried(monkeypatch):
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError
    core = _core()

    def refusing(fields, blobs):  # pylint: disable=unused-argument
        problems = ["exec: unknown field 'stdin_blobs'", "exec: 'timeout' must be >= 0"]
        raise ExecutorTaskError("bad_request", "; ".join(problems), {"problems": problems})

    sent, run = _stub_exec(core, monkeypatch, refusing)
    with pytest.raises(ExecutorTaskError):
        run()
    assert len(sent) == 1 and core.payloads.supported(("natsops", "host-1"))


def test_an_executor_that_keeps_nothing_is_not_asked_again(monkeypatch):
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError
    core = _core()
    core.payloads.sent(("natsops", "host-1"), [__import__("hashlib").sha256(b"UEsDBA" * 4000).hexdigest()])

    def no_cache(fields, blobs):  # pylint: disable=unused-argument
        if blobs and not blobs[0]["sent"]:
            raise ExecutorTaskError("payload_missing", "off", {"missing": [blobs[0]["sha256"]], "capacity": 0})
        return 0, b"ok", b""

    sent, run = _stub_exec(core, monkeypatch, no_cache)
    run()
    run()
    assert [[b["sent"] for b in blobs] for _w, blobs in sent] == [[False], [True], []]
