# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import json

import pytest

from ansible_collections.natsops.fleet.plugins.module_utils.wire import messages as m
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import (
    E_BAD_REQUEST, E_UNSUPPORTED_VERSION, OPERATIONS, PROTOCOL_VERSION, WireError,
)


def test_every_operation_has_a_request_class_and_schema():
    assert set(m.REQUESTS) == set(OPERATIONS) == set(m.SCHEMAS)
    assert m.SCHEMAS["put"]["path"] == ((str,), True, None)
    assert m.SCHEMAS["exec"]["timeout"] == ((int, float), False, 0)
    assert m.SCHEMAS["exec"]["target"][0] == (dict,)


@pytest.mark.parametrize("cls, fields", [
    (m.ExecRequest, {"command": "true", "stdin": {"size": 1, "sha256": "a" * 64}, "become": {"success": "OK"},
                     "target": {"host": "h", "user": "u", "port": 2222, "identity": "zone"}}),
    (m.PutRequest, {"path": "/tmp/x", "size": 3, "sha256": "b" * 64, "mode": 0o600}),
    (m.FetchRequest, {"path": "/etc/hosts"}),
    (m.TransferRequest, {"source": {"bucket": "natsops", "object": "sha256/x"}, "path": "/opt/a", "check": True}),
])
def test_requests_round_trip_through_json(cls, fields):
    req = cls.new("_INBOX.me", **fields)
    wire = json.loads(json.dumps(req.to_dict()))
    assert wire["v"] == PROTOCOL_VERSION and wire["op"] == cls.OP and len(wire["id"]) == 32
    assert m.parse_request(cls.OP, wire) == req


def test_unset_fields_stay_off_the_wire():
    wire = m.FetchRequest.new("_INBOX.me", path="/a").to_dict()
    assert "target" not in wire and wire["keepalive"] == m.DEFAULT_KEEPALIVE


def test_construction_validates_like_parsing():
    with pytest.raises(WireError) as info:
        m.PutRequest.new("_INBOX.me", path="relative", size=-1, sha256="x")
    problems = info.value.details["problems"]
    assert info.value.code == E_BAD_REQUEST and len(problems) == 3
    assert any("absolute path" in p for p in problems) and any("'size' must be >= 0" in p for p in problems)


def test_a_required_field_given_as_null_is_missing():
    with pytest.raises(WireError) as info:
        m.parse_request("fetch", {"v": 1, "op": "fetch", "id": "a", "reply_to": "_INBOX.x", "path": None})
    assert "missing field 'path'" in info.value.message


def test_nested_problems_name_the_field_they_are_in():
    with pytest.raises(WireError) as info:
        m.parse_request("exec", {"v": 1, "op": "exec", "id": "a", "reply_to": "_INBOX.x", "command": "x",
                                 "stdin": {"size": 1, "sha256": "X"}, "target": {"host": "h", "user": "u", "agent": 1}})
    assert "exec.stdin: sha256 must be 64 lowercase hex digits" in info.value.message
    assert "exec.target: unknown field 'agent'" in info.value.message


def test_another_protocol_version_is_not_judged_by_this_ones_fields():
    with pytest.raises(WireError) as info:
        m.parse_request("exec", {"v": 2, "op": "exec", "id": "a", "reply_to": "x", "new_field": 1})
    assert info.value.code == E_UNSUPPORTED_VERSION


def test_secrets_are_never_in_a_repr():
    req = m.ExecRequest.new("_INBOX.me", command="true", become={"success": "OK", "password": "become-secret"},
                            target={"host": "h", "user": "u", "password": "ssh-secret", "private_key": "KEY"})
    text = repr(req)
    assert "become-secret" not in text and "ssh-secret" not in text and "KEY" not in text
    assert req.to_dict()["target"]["password"] == "ssh-secret"  # the wire still carries it


def test_replies_and_summaries():
    result = m.ExecResult.from_dict({"rc": -9, "stdout": {"size": 0, "sha256": "0" * 64},
                                     "stderr": {"size": 0, "sha256": "0" * 64}, "duration": 0.5, "signal": 9})
    assert result.signal == 9 and result.stdout == m.FileSummary(size=0, sha256="0" * 64)
    assert m.Digest.of(b"abc") == m.FileSummary(size=3, sha256="ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    with pytest.raises(WireError):
        m.Accepted.from_dict({"v": 1, "id": "x", "executor": {"name": "n"}})
    transfer = m.TransferResult.from_dict({"changed": False, "sha256": "a" * 64, "path": "/a", "size": None,
                                           "before": {"sha256": "a" * 64, "mode": 420}})
    assert transfer.before == m.FileState(sha256="a" * 64, mode=0o644)


@pytest.mark.parametrize("run_as", ["", "a" * 65, "root\n", "bad user", "x:y", "../root", "\x00", 7, ["root"]])
def test_run_as_must_be_an_account_name(run_as):
    with pytest.raises(WireError) as info:
        m.parse_request("exec", {"v": 1, "op": "exec", "id": "a", "reply_to": "_INBOX.x", "command": "true",
                                 "run_as": run_as})
    assert info.value.code == E_BAD_REQUEST and "run_as" in info.value.message


@pytest.mark.parametrize("run_as", ["root", "natsops", "svc-deploy_1", "a" * 64, "DOMAIN\\user"])
def test_account_names_are_accepted_as_run_as(run_as):
    assert m.ExecRequest.new("_INBOX.me", command="true", run_as=run_as).run_as == run_as


def _blob(offset, size, sent=False, sha256="c" * 64):
    return {"offset": offset, "size": size, "sha256": sha256, "sent": sent}


def _exec_with_blobs(blobs, size=100):
    return {"v": 1, "op": "exec", "id": "a", "reply_to": "_INBOX.x", "command": "x",
            "stdin": {"size": size, "sha256": "a" * 64}, "stdin_blobs": blobs}


def test_stdin_blobs_round_trip_and_say_how_much_is_sent():
    req = m.parse_request("exec", _exec_with_blobs([_blob(10, 20), _blob(30, 5, sent=True), _blob(60, 40)]))
    assert [type(b) for b in req.stdin_blobs] == [m.StdinBlob] * 3 and req.stdin_blobs[1].sent
    assert req.sent_size() == 100 - 20 - 40
    assert m.parse_request("exec", json.loads(json.dumps(req.to_dict()))) == req
    assert m.ExecRequest.new("_INBOX.me", command="x", stdin={"size": 100, "sha256": "a" * 64},
                             stdin_blobs=[m.StdinBlob(offset=0, size=100, sha256="b" * 64, sent=False)]).sent_size() == 0


@pytest.mark.parametrize("blobs, needle", [
    ([], "must hold 1 to 4 ranges"),
    ([_blob(i * 10, 10) for i in range(5)], "must hold 1 to 4 ranges"),
    ([_blob(30, 10), _blob(10, 10)], "exec.stdin_blobs[1] starts before the end of the range before it"),
    ([_blob(10, 10), _blob(19, 10)], "exec.stdin_blobs[1] starts before the end of the range before it"),
    ([_blob(90, 11)], "the ranges end at 101, beyond the 100 bytes of stdin"),
    ([_blob(0, 0)], "exec.stdin_blobs[0]: size must be 1..%d" % m.MAX_STDIN_BLOB),
    ([_blob(0, m.MAX_STDIN_BLOB + 1)], "exec.stdin_blobs[0]: size must be 1..%d" % m.MAX_STDIN_BLOB),
    ([_blob(-1, 10)], "exec.stdin_blobs[0]: offset must be 0.."),
    ([_blob(0, 10, sha256="C" * 64)], "exec.stdin_blobs[0]: sha256 must be 64 lowercase hex digits"),
    ([_blob(0, 10, sent=1)], "exec.stdin_blobs[0]: field 'sent' must be bool, got int"),
    ([{"offset": 0, "size": 10, "sha256": "c" * 64}], "exec.stdin_blobs[0]: missing field 'sent'"),
    ([dict(_blob(0, 10), extra=1)], "exec.stdin_blobs[0]: unknown field 'extra'"),
    (["abc"], "exec.stdin_blobs[0] must be an object, got str"),
    ({"offset": 0}, "field 'stdin_blobs' must be list, got dict"),
])
def test_stdin_blobs_are_validated(blobs, needle):
    with pytest.raises(WireError) as info:
        m.parse_request("exec", _exec_with_blobs(blobs))
    assert info.value.code == E_BAD_REQUEST and needle in info.value.message, info.value.message


def test_stdin_blobs_need_the_whole_stdin_announced():
    doc = _exec_with_blobs([_blob(0, 10)])
    del doc["stdin"]
    with pytest.raises(WireError) as info:
        m.parse_request("exec", doc)
    assert "exec.stdin_blobs needs 'stdin'" in info.value.message
