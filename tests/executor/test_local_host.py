# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LocalHost and the host-independent job code against a temp directory: what lands, what runs, what is
refused, and that nothing is left behind on failure."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import time

import pytest

from natsops_executor import jobs, transfer
from natsops_executor._wire.contract import (
    E_BAD_PATH, E_BECOME, E_BECOME_TIMEOUT, E_CHECKSUM_MISMATCH, E_NOT_FOUND, E_SIZE_MISMATCH, E_SPAWN, E_TIMEOUT, WireError,
)
from natsops_executor._wire.messages import Digest, ExecRequest, FileState, FileSummary, TransferRequest
from natsops_executor.hosts.local import LocalHost

HOST = LocalHost()
CHUNK = 64 * 1024


def _exec(**fields):
    return ExecRequest.new("_INBOX.test", **fields)


async def test_command_output_rc_and_summaries(sender):
    req = _exec(command="printf out; printf err >&2; exit 3")
    result = await jobs.run_command(HOST, req, b"", sender, CHUNK)
    assert result.rc == 3 and sender.data("stdout") == b"out" and sender.data("stderr") == b"err"
    assert result.stdout == Digest.of(b"out") and result.stderr == Digest.of(b"err")
    assert sender.kinds()[-1] == "result" and sender.events[-1][1]["rc"] == 3


async def test_argv_stdin_env_and_cwd(sender, tmp_path):
    req = _exec(argv=[sys.executable, "-c", "import os,sys; sys.stdout.write(sys.stdin.read() + os.environ['X'] + os.getcwd())"],
                env={"X": "-x-"}, cwd=str(tmp_path))
    result = await jobs.run_command(HOST, req, b"in", sender, CHUNK)
    assert result.rc == 0 and sender.data("stdout") == b"in-x-" + str(tmp_path).encode()


async def test_binary_output_is_byte_exact(sender):
    payload = bytes(range(256)) * 1000
    req = _exec(argv=[sys.executable, "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"])
    result = await jobs.run_command(HOST, req, payload, sender, CHUNK)
    assert sender.data("stdout") == payload and result.stdout.sha256 == hashlib.sha256(payload).hexdigest()


async def test_missing_program_is_spawn_failed(sender):
    with pytest.raises(WireError) as info:
        await jobs.run_command(HOST, _exec(argv=["/nonexistent/program"]), b"", sender, CHUNK)
    assert info.value.code == E_SPAWN


async def test_timeout_kills_the_whole_process_group(sender, tmp_path):
    marker = tmp_path / "pid"
    req = _exec(command="sleep 30 & echo $! > %s; wait" % marker, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(WireError) as info:
        await jobs.run_command(HOST, req, b"", sender, CHUNK)
    assert info.value.code == E_TIMEOUT and "process group" in info.value.message
    assert time.monotonic() - started < 5
    child = int(marker.read_text())
    for _attempt in range(50):
        if not os.path.exists("/proc/%d" % child) or open("/proc/%d/stat" % child).read().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the background child %d of the timed-out command survived" % child)


# a stand-in for sudo: asks for a password on stderr; a wrong one gets sudo's "Sorry, try again." and a new prompt
_SUDO = ("import os, sys\n"
         "for attempt in range(3):\n"
         "    sys.stderr.write('[sudo] password: '); sys.stderr.flush()\n"
         "    if sys.stdin.readline().strip() == 'right':\n"
         "        os.write(1, b'BECOME-OK\\n'); break\n"
         "    sys.stderr.write('Sorry, try again.\\n'); sys.stderr.flush()\n"
         "else:\n"
         "    sys.exit(1)\n")
_SUDO_SPEC = {"success": "BECOME-OK", "prompt_prefix": "[sudo] password:", "fail": ["Sorry, try again."],
              "missing": ["sudo: a password is required"], "timeout": 5}


async def test_become_answers_the_prompt_and_strips_the_handshake(sender):
    req = _exec(argv=[sys.executable, "-c", _SUDO + "print('task output')"], become=dict(_SUDO_SPEC, password="right"))
    result = await jobs.run_command(HOST, req, b"", sender, CHUNK)
    assert result.rc == 0, sender.events
    assert sender.data("stdout") == b"task output\n" and b"password" not in sender.data("stderr")


async def test_a_wrong_become_password_is_reported_as_such_and_never_echoed(sender):
    req = _exec(argv=[sys.executable, "-c", _SUDO], become=dict(_SUDO_SPEC, password="wrong-secret"))
    with pytest.raises(WireError) as info:
        await jobs.run_command(HOST, req, b"", sender, CHUNK)
    assert info.value.code == E_BECOME and info.value.details["reason"] == "incorrect_password"
    assert "wrong-secret" not in str(info.value) + repr(info.value.details)


@pytest.mark.parametrize("script, reason", [
    ("import sys; sys.stderr.write('sudo: a password is required\\n')", "missing_password"),
    ("import sys; sys.stderr.write('[sudo] password: '); sys.stderr.flush()", "missing_password"),
])
async def test_a_missing_become_password(sender, script, reason):
    req = _exec(argv=[sys.executable, "-c", script], become=dict(_SUDO_SPEC))
    with pytest.raises(WireError) as info:
        await jobs.run_command(HOST, req, b"", sender, CHUNK)
    assert info.value.code == E_BECOME and info.value.details["reason"] == reason


async def test_an_escalation_that_ends_early_keeps_its_reason(sender):
    # like sudo failing to chdir: the reason is on stderr, after stdout closed
    script = "import os, sys, time; os.close(1); time.sleep(0.2); sys.stderr.write('cd: can\\'t cd to /nonexistent_dir\\n')"
    for _attempt in range(5):
        req = _exec(argv=[sys.executable, "-c", script], become={"success": "BECOME-OK", "timeout": 5})
        with pytest.raises(WireError) as info:
            await jobs.run_command(HOST, req, b"", sender, CHUNK)
        assert info.value.details["reason"] == "premature_end" and "nonexistent_dir" in info.value.details["stderr"]


async def test_a_become_timeout_is_its_own_code(sender):
    req = _exec(argv=[sys.executable, "-c", "import time; time.sleep(10)"], become={"success": "BECOME-OK", "timeout": 0.5})
    with pytest.raises(WireError) as info:
        await jobs.run_command(HOST, req, b"", sender, CHUNK)
    assert info.value.code == E_BECOME_TIMEOUT and info.value.details["reason"] == "timeout"


@pytest.mark.parametrize("prompt", ["Password:", "Passwort:", "Mot de passe :", "密码：", "root's Password: "])
async def test_su_prompts_in_every_language(sender, prompt):
    script = ("import sys; sys.stdout.write(%r); sys.stdout.flush(); "
              "print('BECOME-OK' if sys.stdin.readline().strip() == 'pw' else 'Authentication failure')" % prompt)
    req = _exec(argv=[sys.executable, "-c", script], become={
        "success": "BECOME-OK", "prompt_words": ["Password", "Passwort", "Mot de passe", "密码"], "password": "pw", "timeout": 5})
    assert (await jobs.run_command(HOST, req, b"", sender, CHUNK)).rc == 0


async def test_a_hostile_prompt_costs_nothing(sender):
    # the words are literal text: a would-be regular expression is just a string that never appears
    started = time.monotonic()
    req = _exec(argv=[sys.executable, "-c", "print('a' * 27)"], become={
        "success": "BECOME-OK", "prompt_words": ["(a+)+$"], "password": "pw", "timeout": 2})
    with pytest.raises(WireError):
        await jobs.run_command(HOST, req, b"", sender, CHUNK)
    assert time.monotonic() - started < 2


def _listing(path):
    return sorted(os.listdir(path))


async def test_a_file_lands_with_its_mode_and_nothing_else(tmp_path):
    dest = tmp_path / "f.txt"
    landing = await HOST.landing(str(dest))
    try:
        summary = await jobs.receive_file(landing, Digest.of(b"hello"), 0o640, _writes(b"hel", b"lo"))
    finally:
        await landing.discard()
    assert dest.read_bytes() == b"hello" and stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert summary == Digest.of(b"hello") and _listing(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("announced, code", [(FileSummary(size=5, sha256="0" * 64), E_CHECKSUM_MISMATCH),
                                             (FileSummary(size=4, sha256="0" * 64), E_SIZE_MISMATCH)])
async def test_a_wrong_file_never_lands(tmp_path, announced, code):
    dest = tmp_path / "f.txt"
    dest.write_bytes(b"old")
    landing = await HOST.landing(str(dest))
    with pytest.raises(WireError) as info:
        try:
            await jobs.receive_file(landing, announced, 0o644, _writes(b"hello"))
        finally:
            await landing.discard()
    assert info.value.code == code and dest.read_bytes() == b"old" and _listing(tmp_path) == ["f.txt"]


async def test_bad_destinations_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(WireError) as info:
        await HOST.landing(str(tmp_path / "missing" / "f"))
    assert info.value.code == E_NOT_FOUND
    with pytest.raises(WireError) as info:
        await HOST.landing(str(tmp_path))
    assert info.value.code == E_BAD_PATH


async def test_a_file_is_sent_with_its_summary(sender, tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 200000)
    path.chmod(0o604)
    source = await HOST.open_file(str(path))
    try:
        assert (source.size, source.mode) == (200000, 0o604)
        summary = await jobs.send_file(source, sender, CHUNK)
    finally:
        await source.close()
    assert sender.data("file") == b"x" * 200000 and summary == Digest.of(b"x" * 200000)
    assert sender.events[-1][0] == "result" and sender.events[-1][1] == summary.to_dict()


async def test_only_regular_files_are_sent(tmp_path):
    with pytest.raises(WireError) as info:
        await HOST.open_file(str(tmp_path))
    assert info.value.code == E_BAD_PATH
    with pytest.raises(WireError) as info:
        await HOST.open_file(str(tmp_path / "missing"))
    assert info.value.code == E_NOT_FOUND


async def test_state_of_a_path(tmp_path):
    path = tmp_path / "f"
    assert await HOST.state(str(path)) is None
    path.write_bytes(b"abc")
    path.chmod(0o600)
    assert await HOST.state(str(path)) == FileState(sha256=hashlib.sha256(b"abc").hexdigest(), mode=0o600)
    with pytest.raises(WireError) as info:
        await HOST.state(str(tmp_path))
    assert info.value.code == E_BAD_PATH


async def test_transfer_of_an_executor_file_is_idempotent(sender, tmp_path):
    source = tmp_path / "src"
    source.write_bytes(b"content")
    dest = tmp_path / "dest"

    def request(**extra):
        return TransferRequest.new("_INBOX.t", source={"path": str(source)}, path=str(dest), **extra)

    checked = await transfer.run_transfer(HOST, None, request(check=True), sender)
    assert checked.changed and not dest.exists()
    placed = await transfer.run_transfer(HOST, None, request(mode=0o600), sender)
    assert placed.changed and placed.before is None and dest.read_bytes() == b"content"
    again = await transfer.run_transfer(HOST, None, request(mode=0o600), sender)
    assert not again.changed and again.before == FileState(sha256=placed.sha256, mode=0o600)
    chmodded = await transfer.run_transfer(HOST, None, request(mode=0o644), sender)
    assert chmodded.changed and stat.S_IMODE(dest.stat().st_mode) == 0o644 and dest.read_bytes() == b"content"


def _writes(*blocks):
    async def fill(write):
        for block in blocks:
            write(block)
    return fill
