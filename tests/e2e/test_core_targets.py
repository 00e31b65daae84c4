# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-core's own integration targets through natsops.fleet.nats in agent mode (docs/conformance.md).

The targets come from the installed ansible-core's sdist at test time (tools/coretargets.py; downloaded once
into the user's cache). The executor runs on this machine, as root, so the targets act on this machine as
ansible-test's would: the become targets create the accounts ansibletest0 and ansibletest1 (their handlers
remove them) and a sudoers drop-in, remote_tmp an account tmptest; what they leave is removed here afterwards. Needs root and sudo (CI runs as root and installs
sudo and acl); skipped otherwise. When a target fails, it is run again with ``connection: local`` as the control:
the failure message says whether this machine or the connection is at fault.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import coretargets
from conftest import E2E_WARM, SYSTEM_PYTHON

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("sudo") or not shutil.which("useradd") or not os.path.exists(SYSTEM_PYTHON),
    reason="ansible-core's targets need root, sudo, useradd and %s (CI installs sudo)" % SYSTEM_PYTHON)

# what the targets leave on the host they test, beyond what they remove themselves (remote_tmp deletes its account
# tmptest but not its home, which a later tmptest with another uid could not use)
LEFTOVERS = ("/etc/sudoers.d/ansibletest1", "/tmp/sudoshim.sh", "/tmp/sushim.sh", "/home/tmptest")
ACCOUNTS = ("ansibletest0", "ansibletest1", "tmptest")

# targets run as ansible-test runs them (runme.sh, else as a role), testhost reached through the executor; chosen for
# what they make the connection do: become with a password prompt (sudo, su), become to another user with put/fetch,
# raw commands, binary and non-UTF-8 bytes, stdin/chdir/creates, the environment, scripts (put_file + exec), remote
# temporary directories, wait_for_connection (reset + ping), AnsiballZ (rlimit, module_utils). Not
# interpreter_discovery_python: here it would discover whatever the executor's PATH offers first (a developer's pyenv
# shims); it runs in ssh mode (tests/lab).
TARGETS = ["become_sudo", "become_su", "become", "raw", "binary", "command_shell", "environment", "remote_tmp", "script",
           "wait_for_connection", "ansiballz_python"]


LOCAL = ["-e", "ansible_connection=local"]


def _account_exists(name):
    return subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def integration(tmp_path_factory):
    """A private copy of ansible-core's targets; afterwards, what the targets left behind on this machine is removed
    (only what was not there before)."""
    present = {path for path in LEFTOVERS if os.path.lexists(path)}
    accounts = {name for name in ACCOUNTS if _account_exists(name)}
    try:
        yield coretargets.workspace(str(tmp_path_factory.mktemp("ansible-core")))
    finally:
        for path in LEFTOVERS:
            if path not in present and os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif path not in present and os.path.lexists(path):
                os.unlink(path)
        for name in ACCOUNTS:
            if name not in accounts and _account_exists(name):
                subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def inventory(integration, nats_server, executor):  # pylint: disable=unused-argument
    """testhost (role and script targets) and the connection target's hosts, through the session's executor."""
    nats = {"ansible_connection": "natsops.fleet.nats", "ansible_nats_servers": nats_server.url,
            "ansible_nats_executor": executor.instances[0], "ansible_python_interpreter": SYSTEM_PYTHON,
            **({} if E2E_WARM else {"ansible_nats_warm": False})}
    coretargets.write_inventory(integration, {"testhost": nats}, {"conn": {
        "conn-pipelining": dict(nats, ansible_pipelining=True),
        "conn-no-pipelining": dict(nats, ansible_pipelining=False)}})
    return integration


def _with_control(outcome, control):
    """The target's outcome; when it failed, what the same target gave with connection local (the control: the same
    run with ``-e ansible_connection=local``)."""
    try:
        return outcome()
    except AssertionError as exc:
        verdict = control(LOCAL)
        raise AssertionError("%s\n\nCONTROL (connection: local): %s" % (
            exc, "passes: natsops.fleet.nats is at fault" if verdict.returncode == 0 else
            "fails too: this machine does not meet the target's assumptions\n" + verdict.explain())) from None


def test_connection_target(inventory, tmp_path):
    """ansible-core's connection target (test.sh + test_connection.yml), as connection_local and connection_ssh call
    it: unicode file names and contents through put_file/fetch_file, raw, wait_for_connection, reset_connection,
    no connection variables in the output; pipelined and not."""
    def run(extra=()):
        return coretargets.run_script(inventory, "connection", script="test.sh", env={
            "INVENTORY": os.path.join(inventory, "inventory")}, args=[
            "-e", "target_hosts=conn", "-e", "action_prefix=", "-e", "local_tmp=%s" % (tmp_path / "local"),
            "-e", "remote_tmp=%s" % (tmp_path / "remote")] + list(extra))

    def outcome():
        result = run()
        result.assert_passed(["conn-pipelining", "conn-no-pipelining"])
        assert "SUCCESS: Connection vars not found" in result.stdout, result.explain()

    _with_control(outcome, run)


@pytest.mark.parametrize("target", TARGETS)
def test_target(inventory, target):
    _with_control(lambda: coretargets.run(inventory, target).assert_passed(["testhost"]),
                  lambda extra: coretargets.run(inventory, target, args=extra))
