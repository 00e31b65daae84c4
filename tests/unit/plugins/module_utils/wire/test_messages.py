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
