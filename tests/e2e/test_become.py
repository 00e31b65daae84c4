# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""become through natsops.fleet.nats with real sudo and real accounts.

Needs root (to create two throw-away accounts and a sudoers drop-in, all removed at the
end) and sudo; skipped otherwise. Executors also run as those unprivileged accounts, from
a world-readable copy of the executor and its pure-Python dependencies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest

import devenv
from conftest import PLAYBOOKS, SYSTEM_PYTHON, Playbook

NOPW = "natsops-e2e-nopw"     # sudo without a password
PW = "natsops-e2e-pw"         # sudo with its password
PW_SECRET = "Pw-natsops-e2e-7"
SUDOERS = "/etc/sudoers.d/natsops-e2e"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("sudo") or not shutil.which("useradd") or not os.path.exists(SYSTEM_PYTHON),
    reason="become tests need root, sudo, useradd and %s (CI installs sudo)" % SYSTEM_PYTHON)


def _run(*cmd, stdin=None):
    subprocess.run(cmd, input=stdin, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def accounts():
    homes = tempfile.mkdtemp(prefix="natsops-e2e-homes-")
    os.chmod(homes, 0o755)
    created = []
    try:
        for name in (NOPW, PW):
            subprocess.run(["userdel", "-r", name], capture_output=True, check=False)  # left over from a crash
            _run("useradd", "-m", "-d", os.path.join(homes, name), "-s", "/bin/sh", name)
            created.append(name)
        _run("chpasswd", stdin="%s:%s\n" % (PW, PW_SECRET))
        rules = "%s ALL=(ALL:ALL) NOPASSWD: ALL\n%s ALL=(ALL:ALL) ALL\n" % (NOPW, PW)
        with open(SUDOERS + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(rules)
        os.chmod(SUDOERS + ".tmp", 0o440)
        _run("visudo", "-c", "-f", SUDOERS + ".tmp")
        os.rename(SUDOERS + ".tmp", SUDOERS)
        yield
    finally:
        if os.path.exists(SUDOERS):
            os.unlink(SUDOERS)
        for name in created:
            subprocess.run(["userdel", "-r", name], capture_output=True, check=False)
        shutil.rmtree(homes, ignore_errors=True)


@pytest.fixture(scope="module")
def portable_executor():
    """The executor and its dependencies in a world-readable directory, run with the system Python."""
    site = devenv.portable_site(tempfile.mkdtemp(prefix="natsops-e2e-site-"))
    yield site
    shutil.rmtree(site, ignore_errors=True)


def user_executor(site, url, user, instance, log_dir):
    """An executor process running as an unprivileged account, from the portable copy."""
    return devenv.ExecutorProcess(
        url, [instance], log_dir=log_dir, inherit_env=False,
        command=[shutil.which("runuser") or "/usr/sbin/runuser", "-u", user, "--", SYSTEM_PYTHON, "-m", "natsops_executor"],
        env={"PYTHONPATH": site, "PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"})


@pytest.fixture(scope="module")
def user_executors(accounts, portable_executor, nats_server):  # pylint: disable=unused-argument
    log_dir = tempfile.mkdtemp(prefix="natsops-e2e-logs-")
    os.chmod(log_dir, 0o755)
    started = {}
    try:
        for user in (NOPW, PW):
            started[user] = user_executor(portable_executor, nats_server.url, user, "as-" + user, log_dir)
        yield started
    finally:
        for proc in started.values():
            proc.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


def _whoami(nats_server, tmp_path, instance, account, become_user, password=None, pipelining="true", check=True):
    book = Playbook(nats_server.url, tmp_path)
    hostvars = {"ansible_nats_executor": instance, "ansible_user": account, "ansible_nats_pipelining": pipelining,
                "ansible_become_user": become_user}
    if password is not None:
        hostvars["ansible_become_password"] = password
    return book.run("become.yml", hostvars=hostvars, extra_vars={"expected": become_user}, check=check)


@pytest.mark.parametrize("pipelining", ["true", "false"])
@pytest.mark.usefixtures("executor", "accounts")
def test_root_executor_becomes_unprivileged_user_without_password(nats_server, tmp_path, pipelining):
    _whoami(nats_server, tmp_path, "e2e-host", "root", NOPW, pipelining=pipelining)


def test_unprivileged_executor_becomes_root_without_password(nats_server, user_executors, tmp_path):  # pylint: disable=unused-argument
    _whoami(nats_server, tmp_path, "as-" + NOPW, NOPW, "root")


@pytest.mark.parametrize("pipelining", ["true", "false"])
def test_unprivileged_executor_becomes_root_with_sudo_password(nats_server, user_executors, tmp_path, pipelining):
    _whoami(nats_server, tmp_path, "as-" + PW, PW, "root", password=PW_SECRET, pipelining=pipelining)
    assert PW_SECRET not in user_executors[PW].output(), "the become password must never be logged"


@pytest.mark.skipif(not shutil.which("setfacl"), reason="ansible needs setfacl (package acl) to share temporary "
                    "files between two unprivileged users, with any connection")
def test_unprivileged_executor_becomes_other_user_with_sudo_password(nats_server, user_executors, tmp_path):  # pylint: disable=unused-argument
    _whoami(nats_server, tmp_path, "as-" + PW, PW, NOPW, password=PW_SECRET)


@pytest.mark.parametrize("account,password,pipelining", [(NOPW, None, "true"), (NOPW, None, "false"),
                                                         (PW, PW_SECRET, "true")])
def test_become_is_not_skipped_when_remote_user_is_left_at_its_default(nats_server, user_executors, tmp_path, account,
                                                                       password, pipelining):
    """No ansible_user: remote_user is root, so ansible-core leaves become to root out; the executor runs as an
    unprivileged account, says so, and the connection applies become itself: the task runs as root, not silently
    as the executor's account."""
    book = Playbook(nats_server.url, tmp_path)
    hostvars = {"ansible_nats_executor": "as-" + account, "ansible_nats_pipelining": pipelining}
    if password is not None:
        hostvars["ansible_become_password"] = password
    book.run("become.yml", hostvars=hostvars, extra_vars={"expected": "root"})
    if password is not None:
        assert password not in user_executors[account].output()


def test_become_is_applied_when_remote_user_is_set_to_another_account(nats_server, user_executors, tmp_path):  # pylint: disable=unused-argument
    """ansible_user root (become_user root: ansible-core leaves become out) on an executor running as an unprivileged
    account: the executor refuses the command as not run as root (nothing runs), the connection sends it again with
    sudo applied, and says so at -vvv."""
    book = Playbook(nats_server.url, tmp_path)
    result = book.run("become_command.yml", hostvars={"ansible_nats_executor": "as-" + NOPW, "ansible_user": "root"},
                      extra_vars={"expected": "root"}, env={"ANSIBLE_VERBOSITY": "3"})
    assert "the executor runs commands as %s, not as remote_user root" % NOPW in result.stdout


def test_wrong_sudo_password_is_a_clear_error(nats_server, user_executors, tmp_path):
    result = _whoami(nats_server, tmp_path, "as-" + PW, PW, "root", password="not-the-password", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Incorrect sudo password" in output, output  # ansible-core's own wording (its ssh connection's)
    assert "not-the-password" not in user_executors[PW].output() and "not-the-password" not in output


def test_missing_sudo_password_is_a_clear_error(nats_server, user_executors, tmp_path):  # pylint: disable=unused-argument
    result = _whoami(nats_server, tmp_path, "as-" + PW, PW, "root", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Missing sudo password" in output, output  # ansible-core's own wording (its ssh connection's)


def test_become_playbook_exists():
    assert os.path.exists(os.path.join(PLAYBOOKS, "become.yml"))


def _recap_clean(result, host):
    """rc 0 and the host's recap: nothing failed, nothing unreachable (the playbooks ignore their expected failures
    and assert each message themselves)."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    assert re.search(r"%s\s+: ok=[1-9]\d*\s+changed=\d+\s+unreachable=0\s+failed=0\s" % re.escape(host), result.stdout), output[-12000:]


def test_sudo_failures_are_worded_as_ansible_core_words_them(nats_server, user_executors, tmp_path):
    """Wrong and missing sudo passwords, sudo's own reason (chdir), a become timeout (unreachable): pipelined, not
    pipelined and raw, through an executor whose account sudo asks for its password."""
    book = Playbook(nats_server.url, tmp_path)
    result = book.run("become_sudo_failures.yml", hostvars={"ansible_nats_executor": "as-" + PW, "ansible_user": PW},
                      extra_vars={"sudo_password": PW_SECRET}, check=False)
    _recap_clean(result, "e2e-host")
    assert "not-the-sudo-password" not in user_executors[PW].output() + result.stdout + result.stderr


def test_su_failures_are_worded_as_ansible_core_words_them(nats_server, user_executors, tmp_path):
    """A wrong su password (module and raw), none, and a prompt never recognised (a timeout: unreachable)."""
    book = Playbook(nats_server.url, tmp_path)
    result = book.run("become_su_failures.yml", hostvars={"ansible_nats_executor": "as-" + NOPW, "ansible_user": NOPW},
                      extra_vars={"su_user": PW, "su_password": PW_SECRET}, check=False)
    _recap_clean(result, "e2e-host")
    assert "not-the-su-password" not in user_executors[NOPW].output() + result.stdout + result.stderr
