# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import json

import pytest

from ansible_collections.natsops.fleet.plugins.module_utils.wire import contract as c
from ansible_collections.natsops.fleet.plugins.module_utils.wire import messages as m


@pytest.mark.parametrize("value", ["default", "管理网", "node-01", "zone_a", "x" * 128])
def test_valid_instance_ids(value):
    assert c.validate_instance_id(value) == value


@pytest.mark.parametrize("value,needle", [
    ("", "empty"), ("   ", "empty"), ("a.b", "'.'"), ("a b", "' '"), ("a>", "'>'"), ("tab\tx", "'\\t'"),
    ("${NATS_INSTANCE_ID}", "unrendered"), ("{{ zone }}", "unrendered"), ("$ZONE", "unrendered"),
    ("%(zone)s", "unrendered"), ("x" * 129, "longer than 128"), (5, "must be a string"), ("*", "can only be served"),
])
def test_invalid_instance_ids(value, needle):
    with pytest.raises(c.WireError) as info:
        c.validate_instance_id(value)
    assert info.value.code == c.E_BAD_INSTANCE
    assert needle in info.value.message


def test_star_may_be_served():
    assert c.validate_instance_id("*", allow_all=True) == "*"


@pytest.mark.parametrize("value,ok", [("natsops", True), ("prod.natsops", True), ("a-b_c", True),
                                      ("", False), ("a..b", False), ("a b", False), ("a.*", False)])
def test_namespace(value, ok):
    if ok:
        assert c.validate_namespace(value) == value
    else:
        with pytest.raises(c.WireError):
            c.validate_namespace(value)


def test_subject():
    assert c.subject("natsops", "exec", "管理网") == "natsops.exec.管理网"
    with pytest.raises(ValueError):
        c.subject("natsops", "rm", "x")


def test_pack_unpack_round_trip_with_attachment():
    headers, body = c.pack(c.KIND_REQUEST, {"a": "ü"}, b"\x00\xffraw", seq=3)
    assert headers[c.H_KIND] == c.KIND_REQUEST and headers[c.H_SEQ] == "3"
    doc, attachment = c.unpack(headers, body)
    assert doc == {"a": "ü"} and attachment == b"\x00\xffraw"


def test_pack_without_document_is_raw_data():
    headers, body = c.pack(c.KIND_DATA, None, b"bytes", stream="stdout")
    assert body == b"bytes" and headers[c.H_STREAM] == "stdout"


@pytest.mark.parametrize("headers,body,code", [
    ({}, b"{bad", c.E_BAD_JSON),
    ({}, b"[1]", c.E_BAD_JSON),
    ({}, b"\xff\xfe", c.E_BAD_JSON),
    ({c.H_JSON_LENGTH: "x"}, b"{}", c.E_BAD_REQUEST),
    ({c.H_JSON_LENGTH: "10"}, b"{}", c.E_BAD_REQUEST),
    ({}, json.dumps({"p": "x" * (c.MAX_REQUEST_JSON + 1)}).encode(), c.E_TOO_LARGE),
])
def test_unpack_errors(headers, body, code):
    with pytest.raises(c.WireError) as info:
        c.unpack(headers, body)
    assert info.value.code == code


def _req(op, **extra):
    doc = {"v": 1, "op": op, "id": "abc", "reply_to": "_INBOX.x"}
    doc.update(extra)
    return doc


def test_valid_exec_request_gets_defaults():
    req = m.parse_request("exec", _req("exec", command="true"))
    assert req.shell == "/bin/sh" and req.timeout == 0 and req.keepalive == m.DEFAULT_KEEPALIVE
    assert req.become is None and req.pty is False


def test_exec_request_problems_are_all_listed():
    with pytest.raises(c.WireError) as info:
        m.parse_request("exec", _req("exec", command=1, timeout=True, bogus=2))
    problems = info.value.details["problems"]
    assert any("unknown field 'bogus'" in p for p in problems)
    assert any("'command' must be str" in p for p in problems)
    assert any("'timeout' must be" in p for p in problems)


@pytest.mark.parametrize("extra,needle", [
    ({}, "exactly one of 'command' or 'argv'"),
    ({"command": "x", "argv": ["x"]}, "exactly one"),
    ({"argv": []}, "non-empty list"),
    ({"argv": ["a", 1]}, "non-empty list"),
    ({"command": "x", "env": {"A": 1}}, "map strings to strings"),
    ({"command": "x", "timeout": -1}, "'timeout' must be >= 0"),
    ({"command": "x", "cwd": "relative"}, "absolute path"),
    ({"command": "x", "stdin": {"size": 1}}, "missing field 'sha256'"),
    ({"command": "x", "stdin": {"size": 1, "sha256": "XYZ"}}, "64 lowercase hex"),
    ({"command": "x", "become": {"success": "S", "prompt": "("}}, "unknown field 'prompt'"),  # no caller regex
    ({"command": "x", "become": {"success": "S", "prompt_words": [""]}}, "prompt_words must be"),
    ({"command": "x", "become": {"prompt": "p"}}, "missing field 'success'"),
    ({"command": "x", "keepalive": 0}, "keepalive"),
    ({"command": "x", "op": "put"}, "field 'op' is 'put'"),
])
def test_exec_request_checks(extra, needle):
    doc = _req("exec")
    doc.update(extra)
    with pytest.raises(c.WireError) as info:
        m.parse_request("exec", doc)
    assert needle in info.value.message


def test_protocol_version_mismatch():
    with pytest.raises(c.WireError) as info:
        m.parse_request("exec", dict(_req("exec", command="x"), v=2))
    assert info.value.code == c.E_UNSUPPORTED_VERSION


@pytest.mark.parametrize("path,ok", [("/tmp/x", True), ("/", True), ("tmp/x", False), ("/a/../b", False),
                                     ("/a/./b", False), ("/a\x00b", False)])
def test_paths(path, ok):
    assert (m.path_problems(path, "p") == []) is ok


def test_put_and_fetch_requests():
    req = m.parse_request("put", _req("put", path="/tmp/x", size=3, sha256="a" * 64, mode=0o644))
    assert req.mode == 0o644
    with pytest.raises(c.WireError):
        m.parse_request("put", _req("put", path="/tmp/x", size=-1, sha256="a" * 64))
    with pytest.raises(c.WireError):
        m.parse_request("put", _req("put", path="/tmp/x", size=1, sha256="a" * 64, mode=0o17777))
    assert m.parse_request("fetch", _req("fetch", path="/etc/hosts")).path == "/etc/hosts"
    with pytest.raises(c.WireError):
        m.parse_request("fetch", _req("fetch", path="/etc/../shadow"))


def test_chunk_size_and_liveness():
    assert c.chunk_size(1024 * 1024) == c.MAX_CHUNK
    assert c.chunk_size(64 * 1024) == 64 * 1024 - c.FRAME_OVERHEAD
    assert c.chunk_size(1000) == c.MIN_CHUNK
    assert c.liveness_timeout(1.0) == 5.0
    assert c.liveness_timeout(0.1) == c.MIN_LIVENESS


def test_executor_info_round_trip():
    meta = c.executor_metadata("natsops", ["default", "管理网"], "host1", "0.1.0")
    record = c.parse_executor_info({"name": c.SERVICE_NAME, "id": "X", "metadata": meta,
                                    "endpoints": [{"subject": "natsops.exec.default"}]})
    assert record["instances"] == ["default", "管理网"] and record["hostname"] == "host1"
    assert c.serves(record, "管理网") and not c.serves(record, "other")
    assert c.serves(dict(record, instances=["*"]), "other")
    assert c.parse_executor_info({"name": "someone-else"}) is None
    assert record["warm"] is False
    warm = c.executor_metadata("natsops", ["default"], "host1", "0.1.0", warm=True)
    assert c.parse_executor_info({"name": c.SERVICE_NAME, "id": "Y", "metadata": warm})["warm"] is True
    assert record["payload_cache"] is False  # also what an older executor's metadata (without the key) reads as
    cache = c.executor_metadata("natsops", ["default"], "host1", "0.1.0", payload_cache=True)
    assert c.parse_executor_info({"name": c.SERVICE_NAME, "id": "Z", "metadata": cache})["payload_cache"] is True


def test_error_dict_round_trip():
    err = c.WireError.from_dict(c.WireError(c.E_TIMEOUT, "slow", {"t": 1}).to_dict())
    assert (err.code, err.message, err.details) == (c.E_TIMEOUT, "slow", {"t": 1})
    assert c.WireError.from_dict("junk").code == c.E_INTERNAL


def test_ssh_target_gets_defaults_on_every_operation():
    for op, extra in (("exec", {"command": "true"}), ("put", {"path": "/tmp/x", "size": 0, "sha256": "a" * 64}),
                      ("fetch", {"path": "/tmp/x"})):
        req = m.parse_request(op, _req(op, target={"host": "10.0.0.5", "user": "root", "identity": "zone"}, **extra))
        assert req.target == m.Target(host="10.0.0.5", port=22, user="root", identity="zone", password=None,
                                      private_key=None, passphrase=None)
    assert m.parse_request("exec", _req("exec", command="true")).target is None


@pytest.mark.parametrize("target, needle", [
    ({"user": "root"}, "missing field 'host'"),
    ({"host": "h"}, "missing field 'user'"),
    ({"host": "h", "user": "root", "port": 0}, "'port' must be 1..65535"),
    ({"host": "h", "user": "root", "port": "22"}, "field 'port' must be int"),
    ({"host": "-oProxyCommand=x", "user": "root"}, "'host' must be a host name"),
    ({"host": "a b", "user": "root"}, "'host' must be a host name"),
    ({"host": "h", "user": "ro ot"}, "'user' must be a user name"),
    ({"host": "h", "user": "root", "identity": "k", "password": "p"}, "not both"),
    ({"host": "h", "user": "root", "agent": True}, "unknown field 'agent'"),
])
def test_bad_ssh_targets_are_refused(target, needle):
    with pytest.raises(c.WireError) as info:
        m.parse_request("exec", _req("exec", command="true", target=target))
    assert info.value.code == c.E_BAD_REQUEST and needle in info.value.message


def test_secrets_of_a_target_are_redacted():
    target = m.Target(host="h", port=22, user="bob", password="s3cret", private_key="-----BEGIN", passphrase=None)
    assert "s3cret" not in repr(target) and "BEGIN" not in repr(target)
    shown = target.redacted()
    assert "s3cret" not in json.dumps(shown) and "BEGIN" not in json.dumps(shown)
    assert shown["user"] == "bob" and shown["passphrase"] is None


def test_ssh_failures_are_unreachable_codes():
    for code in (c.E_TARGET_UNREACHABLE, c.E_HOST_KEY, c.E_TARGET_AUTH, c.E_NO_RESPONDERS):
        assert code in c.UNREACHABLE_CODES and code in c.ERROR_CODES
    assert c.E_TIMEOUT not in c.UNREACHABLE_CODES
