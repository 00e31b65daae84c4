# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""signing_key: a seed file is created once (0600, never overwritten), the public key of a seed, .nk or .creds
file is read, check mode changes nothing, the seed never appears in a result."""

from __future__ import annotations

import contextlib
import json
import os
import stat

import pytest

from ansible_collections.natsops.fleet.plugins.module_utils.wire.signing import SigningKey, generate_seed, public_key_problems
from ansible_collections.natsops.fleet.plugins.modules import signing_key
from ansible_collections.natsops.fleet.plugins.modules.signing_key import KeyFileError, create_key_file, read_public_key

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core before 2.19: the arguments are what AnsibleModule reads from basic._ANSIBLE_ARGS
    from ansible.module_utils import basic
    from ansible.module_utils.common.text.converters import to_bytes

    @contextlib.contextmanager
    def patch_module_args(args=None):
        saved = basic._ANSIBLE_ARGS
        basic._ANSIBLE_ARGS = to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args or {}}))
        try:
            yield
        finally:
            basic._ANSIBLE_ARGS = saved


CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.

-----BEGIN USER NKEY SEED-----
%s
------END USER NKEY SEED------
"""


def _run(args, check_mode=False, diff=True):
    """The module's result (exit_json or fail_json) for these arguments."""
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            signing_key.main()


def _result(capsys, args, check_mode=False):
    _run(args, check_mode)
    out = capsys.readouterr().out
    return json.loads(out), out


def test_a_new_key_file_is_private_and_never_overwritten(tmp_path):
    path = str(tmp_path / "keys" / "signing.nk")
    public, created = create_key_file(path)
    assert created and public_key_problems(public) == [] and public.startswith("U")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert SigningKey.from_file(path).public_key == public
    seed = open(path, "rb").read()
    assert seed.startswith(b"S") and seed.endswith(b"\n")
    # a second writer that lost the race gets the first writer's key and writes nothing
    assert create_key_file(path) == (public, False)
    assert open(path, "rb").read() == seed
    assert [n for n in os.listdir(os.path.dirname(path)) if n != "signing.nk"] == []  # no temp file left


def test_the_public_key_of_a_seed_nk_or_creds_file(tmp_path):
    seed = generate_seed()
    expected = SigningKey(seed, "test").public_key
    for name, text in (("plain.seed", seed.decode() + "\n"), ("user.nk", seed.decode()),
                       ("user.creds", CREDS % seed.decode())):
        (tmp_path / name).write_text(text)
        assert read_public_key(str(tmp_path / name)) == expected


def test_a_file_without_a_seed_is_refused_and_kept(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a key\n")
    with pytest.raises(KeyFileError) as caught:
        read_public_key(str(path))
    assert "holds no NKey seed" in str(caught.value) and "never overwritten" in str(caught.value)
    with pytest.raises(KeyFileError):
        read_public_key(str(tmp_path))


def test_module_present_check_mode_then_real_then_unchanged(tmp_path, capsys):
    path = str(tmp_path / "signing.nk")
    checked, _out = _result(capsys, {"path": path}, check_mode=True)
    assert checked["changed"] and "public_key" not in checked and not os.path.exists(path)
    assert checked["diff"]["before"]["state"] == "absent" and checked["diff"]["after"]["mode"] == "0600"

    made, out = _result(capsys, {"path": path})
    seed = open(path).read().strip()
    assert made["changed"] and made["public_key"] == SigningKey.from_file(path).public_key
    assert seed not in out  # the seed never leaves the host
    assert made["diff"]["after"] == {"path": path, "state": "present", "public_key": made["public_key"]}

    for check_mode in (True, False):
        again, out = _result(capsys, {"path": path}, check_mode=check_mode)
        assert not again["changed"] and again["public_key"] == made["public_key"] and seed not in out
    assert open(path).read().strip() == seed


def test_module_mode_change_and_absent(tmp_path, capsys):
    path = str(tmp_path / "signing.nk")
    public = _result(capsys, {"path": path})[0]["public_key"]
    checked = _result(capsys, {"path": path, "mode": "0640"}, check_mode=True)[0]
    assert checked["changed"] and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    changed = _result(capsys, {"path": path, "mode": "0640"})[0]
    assert changed["changed"] and changed["public_key"] == public and stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert changed["diff"]["before"]["mode"] == "0600" and changed["diff"]["after"]["mode"] == "0640"

    checked = _result(capsys, {"path": path, "state": "absent"}, check_mode=True)[0]
    assert checked["changed"] and os.path.exists(path) and checked["diff"]["before"]["public_key"] == public
    removed = _result(capsys, {"path": path, "state": "absent"})[0]
    assert removed["changed"] and not os.path.exists(path) and "public_key" not in removed
    assert not _result(capsys, {"path": path, "state": "absent"})[0]["changed"]


def test_module_fails_on_a_file_that_is_no_key(tmp_path, capsys):
    path = tmp_path / "other"
    path.write_text("hello\n")
    failed = _result(capsys, {"path": str(path)})[0]
    assert failed["failed"] and "holds no NKey seed" in failed["msg"]
    assert path.read_text() == "hello\n"
