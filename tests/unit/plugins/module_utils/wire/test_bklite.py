# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import json

import pytest

from ansible_collections.natsops.fleet.plugins.module_utils.wire import bklite as bk
from ansible_collections.natsops.fleet.plugins.module_utils.wire import contract as c
from ansible_collections.natsops.fleet.plugins.module_utils.wire import messages as m


def test_subjects_have_no_namespace():
    assert bk.subject(bk.SSH_EXECUTE, "管理网") == "ssh.execute.管理网"
    assert bk.method_of("download.remote.a-b") == ("download.remote", "a-b")
    with pytest.raises(ValueError):
        bk.subject("exec.local", "x")


def test_envelope_round_trip_fills_zero_values():
    req = bk.unpack_request(bk.LOCAL_EXECUTE, bk.pack_request({"command": "ls", "execute_timeout": 5, "extra": 1}))
    assert req["command"] == "ls" and req["shell"] == "" and req["env"] is None and req["stream_logs"] is False
    assert "extra" not in req


@pytest.mark.parametrize("method,body,message", [
    (bk.LOCAL_EXECUTE, b"{nope", bk.MSG_BAD_PAYLOAD),
    (bk.LOCAL_EXECUTE, b'{"args": []}', bk.MSG_NO_ARGS),
    (bk.LOCAL_EXECUTE, b"{}", bk.MSG_NO_ARGS),
    (bk.UNZIP_LOCAL, b'{"args": []}', bk.MSG_BAD_PAYLOAD),
    (bk.LOCAL_EXECUTE, b'{"args": "x"}', bk.MSG_BAD_PAYLOAD),
    (bk.SSH_EXECUTE, b'{"args": [{"port": "22"}]}', bk.MSG_BAD_PAYLOAD),
    (bk.SSH_EXECUTE, b'{"args": [{"port": -1}]}', bk.MSG_BAD_PAYLOAD),
    (bk.LOCAL_EXECUTE, b'{"args": [{"execute_timeout": 1.5}]}', bk.MSG_BAD_PAYLOAD),
    (bk.LOCAL_EXECUTE, b'{"args": [{"stream_logs": 1}]}', bk.MSG_BAD_PAYLOAD),
    (bk.LOCAL_EXECUTE, b'{"args": [{"env": {"A": 1}}]}', bk.MSG_BAD_PAYLOAD),
])
def test_bad_envelopes_and_types(method, body, message):
    with pytest.raises(bk.BkliteError) as info:
        bk.unpack_request(method, body)
    assert (info.value.code, info.value.message, info.value.result) == (bk.INVALID_REQUEST, message, message)


@pytest.mark.parametrize("method,fields,message", [
    (bk.LOCAL_EXECUTE, {"command": " "}, "command is required"),
    (bk.LOCAL_EXECUTE, {"command": "x"}, "execute timeout must be greater than 0"),
    (bk.LOCAL_EXECUTE, {"command": "x", "execute_timeout": 1, "shell": " Fish "}, "unsupported shell: Fish"),
    (bk.SSH_EXECUTE, {"command": "x", "execute_timeout": 1}, "host is required"),
    (bk.SSH_EXECUTE, {"command": "x", "host": "h", "execute_timeout": 1}, "user is required"),
    (bk.SSH_EXECUTE, {"command": "x", "host": "h", "user": "u", "execute_timeout": 1}, "port must be greater than 0"),
])
def test_execute_validation_in_bklite_order(method, fields, message):
    req = bk.unpack_request(method, bk.pack_request(fields))
    with pytest.raises(bk.BkliteError) as info:
        bk.check_execute(method, req)
    assert info.value.message == message


def test_shell_is_normalised_and_mapped():
    req = bk.check_execute(bk.LOCAL_EXECUTE, bk.unpack_request(bk.LOCAL_EXECUTE, bk.pack_request(
        {"command": "x", "execute_timeout": 1, "shell": " BASH "})))
    assert req["shell"] == "bash" and bk.shell_argv("bash", "x") == ["bash", "-c", "x"]
    assert bk.shell_argv("cmd", "dir") == ["cmd", "/c", "dir"] and bk.shell_argv("pwsh", "ls") == ["pwsh", "-Command", "ls"]


def test_replies_keep_bklite_field_order():
    ok = bk.encode(bk.reply("i1", "hi\n"))
    assert ok == b'{"result":"hi\\n","instance_id":"i1","success":true}'
    failed = bk.reply("i1", error=bk.BkliteError(bk.DEPENDENCY_FAILURE, "boom", bk.STAGE_SSH_DIAL, bk.CATEGORY_NETWORK))
    assert list(failed) == ["result", "instance_id", "success", "code", "error", "stage", "category"]
    assert failed["result"] == "boom"
    health = bk.health_reply("i1", now=0)
    assert health == {"success": True, "status": "ok", "instance_id": "i1", "timestamp": "1970-01-01T00:00:00Z"}


def test_output_cap_and_fit():
    assert bk.capped_output(b"a", b"b") == "ab"
    cut = bk.capped_output(b"x" * bk.OUTPUT_LIMIT, b"y")
    assert len(cut.encode()) == bk.OUTPUT_LIMIT and cut.endswith(bk.TRUNCATION_MARKER)
    body = bk.fit(bk.reply("i1", cut), 64 * 1024)
    assert len(body) <= 64 * 1024 and json.loads(body)["result"].endswith(bk.TRUNCATION_MARKER)
    # multi-byte output is never cut inside a character
    assert bk.capped_output("管".encode() * (bk.OUTPUT_LIMIT // 3 + 1), b"").encode("utf-8")


def test_exit_code_from_the_error_text():
    assert bk.exit_code({"error": "Command execution failed with exit code 7: exit status 7"}) == 7
    assert bk.exit_code({"error": "Command execution failed: Process exited with status 3"}) == 3
    assert bk.exit_code({"error": "Failed to create SSH client: refused"}) is None


def test_line_events_split_and_skip_empty_lines():
    sent = []

    async def publish(subject, body):
        sent.append((subject, json.loads(body)))

    async def run():
        events = bk.LineEvents(publish, "t", "e1")
        await events.feed("stdout", b"one\r\n\npar")
        await events.feed("stdout", b"tial\n")
        await events.feed("stderr", b"tail")
        await events.flush()

    import asyncio  # pylint: disable=import-outside-toplevel
    asyncio.run(run())
    assert [(s, e["stream"], e["line"], e["execution_id"]) for s, e in sent] == [
        ("t", "stdout", "one", "e1"), ("t", "stdout", "partial", "e1"), ("t", "stderr", "tail", "e1")]


def test_transfer_requests_are_validated():
    base = {"v": c.PROTOCOL_VERSION, "op": c.OP_TRANSFER, "id": "x", "reply_to": "_INBOX.1", "path": "/a"}
    ok = m.parse_request(c.OP_TRANSFER, dict(base, source={"bucket": "natsops", "object": "sha256/ab"}))
    assert ok.check is False and ok.source.path is None
    for source, needle in (({"bucket": "natsops"}, "exactly one"), ({"object": "o"}, "'bucket'"),
                           ({"bucket": "a.b", "object": "o"}, "'bucket'"), ({"path": "rel"}, "absolute"),
                           ({"path": "/a", "object": "o", "bucket": "b"}, "exactly one")):
        with pytest.raises(c.WireError) as info:
            m.parse_request(c.OP_TRANSFER, dict(base, source=source))
        assert needle in info.value.message
    assert c.object_digest_hex("SHA-256=" + "A" * 43 + "=") == "00" * 32
    assert c.object_digest_hex("bogus") is None
