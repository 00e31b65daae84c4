# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-core's own integration targets through natsops.fleet.nats in ssh mode (docs/conformance.md): the
controller reaches only NATS; a zone executor on the executor host runs each task on a zone host over SSH.

The targets come from the installed ansible-core's sdist at test time (tools/coretargets.py, cached). They act on
the zone host as ansible-test's would on its test host (accounts, sudoers drop-ins): the lab is thrown away after.
"""

import json
import os
import re
import subprocess

import pytest

import coretargets
import devenv
import fleetkit

pytestmark = pytest.mark.lab(hosts=1, zone_hosts=1)

ZONE = "conformance"
KNOWN_HOSTS = "/etc/natsops/conformance_known_hosts"
ROOT_SECRET = "Root-conformance-5"
PLAYBOOKS = os.path.join(fleetkit.ROOT, "tests", "e2e", "playbooks")

# targets run as ansible-test runs them (runme.sh, else as a role); in ssh mode the ones whose connection work differs
# from agent mode: become with a password prompt over an SSH channel (sudo, su), become to another user with
# put/fetch (SFTP), raw, binary bytes, scripts, remote temporary directories, wait_for_connection, AnsiballZ (rlimit,
# module_utils), interpreter discovery (meant for non-local connections), and async (a daemonised job that outlives
# its SSH channel)
TARGETS = ["become_sudo", "become_su", "become", "raw", "binary", "remote_tmp", "script", "wait_for_connection",
           "ansiballz_python", "interpreter_discovery_python", "async"]


@pytest.fixture(scope="module")
def zone(lab, tmp_path_factory):
    """nats-server on the controller's management address and a zone executor (strict host keys, the lab key as
    its default identity) on the executor host; the zone host the targets run on."""
    scratch = str(tmp_path_factory.mktemp("conformance"))
    zone_hosts = [h for h in lab.hosts if h["networks"] == ["zone"]]
    nats = devenv.NatsServer(listen=lab.info["controller_address"])
    executor = None
    try:
        executor = devenv.LabExecutor(
            lab.info["executor_hosts"][0], nats.url, [ZONE], unit="natsops-conformance", scratch=scratch,
            files={KNOWN_HOSTS: lab.known_hosts(zone_hosts)},
            extra_args=["--ssh-known-hosts", KNOWN_HOSTS, "--ssh-host-key-policy", "strict",
                        "--ssh-identity", "default=%s" % lab.info["executor_key_path"]])
        yield {"nats": nats, "host": zone_hosts[-1], "executor": executor, "scratch": scratch}
    finally:
        if executor is not None:
            executor.stop()
        nats.stop()


def _hostvars(zone, user="root"):
    return {"ansible_connection": "natsops.fleet.nats", "ansible_nats_mode": "ssh", "ansible_nats_executor": ZONE,
            "ansible_nats_servers": zone["nats"].url, "ansible_host": zone["host"]["addresses"]["zone"],
            "ansible_user": user, "ansible_python_interpreter": "/usr/bin/python3"}


@pytest.fixture(scope="module")
def integration(zone, tmp_path_factory):
    """A private copy of ansible-core's targets with an inventory: testhost (role and script targets) and the
    connection target's hosts, all the zone host through the zone executor."""
    integration = coretargets.workspace(str(tmp_path_factory.mktemp("ansible-core")))
    hostvars = _hostvars(zone)
    coretargets.write_inventory(integration, {"testhost": hostvars}, {"conn": {
        "conn-pipelining": dict(hostvars, ansible_pipelining=True),
        "conn-no-pipelining": dict(hostvars, ansible_pipelining=False)}})
    return integration


def test_connection_target(integration, tmp_path):
    """ansible-core's connection target (test.sh + test_connection.yml), as connection_ssh calls it, pipelined and not."""
    result = coretargets.run_script(integration, "connection", script="test.sh", env={
        "INVENTORY": os.path.join(integration, "inventory")}, args=[
        "-e", "target_hosts=conn", "-e", "action_prefix=", "-e", "local_tmp=%s" % (tmp_path / "local"),
        "-e", "remote_tmp=/tmp/ansible-remote"])
    result.assert_passed(["conn-pipelining", "conn-no-pipelining"])
    assert "SUCCESS: Connection vars not found" in result.stdout, result.explain()


@pytest.mark.parametrize("target", TARGETS)
def test_target(integration, target):
    coretargets.run(integration, target).assert_passed(["testhost"])


def _failures(zone, tmp_path, playbook, user, extra_vars):
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"zone-host": _hostvars(zone, user)}}}))
    result = subprocess.run([devenv.tool("ansible-playbook"), "-i", str(inventory), os.path.join(PLAYBOOKS, playbook),
                             "-e", json.dumps(extra_vars)], env=devenv.ansible_env(), capture_output=True, text=True,
                            timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    assert re.search(r"zone-host\s+: ok=[1-9]\d*\s+changed=\d+\s+unreachable=0\s+failed=0\s", result.stdout), output[-12000:]
    return output


def test_sudo_failures_are_worded_as_ansible_core_words_them(zone, tmp_path):
    """As bob (sudo asks for his password): wrong and missing passwords, sudo's own chdir reason, a become timeout
    (unreachable); pipelined, not pipelined and raw (tests/e2e/playbooks/become_sudo_failures.yml)."""
    output = _failures(zone, tmp_path, "become_sudo_failures.yml", "bob", {"sudo_password": "bob-secret"})
    assert "not-the-sudo-password" not in output + zone["executor"].log()


def test_su_failures_are_worded_as_ansible_core_words_them(zone, lab, tmp_path):
    """As bob, su to root: right and wrong password (module, raw), none, a prompt never recognised
    (become_su_failures.yml). root gets a password on this throw-away host (sshd refuses root passwords anyway);
    su between two unprivileged accounts would need setfacl, which the lab hosts lack."""
    done = lab.ssh(zone["host"]["name"], "chpasswd", input_text="root:%s\n" % ROOT_SECRET)
    assert done.returncode == 0, done.stderr
    output = _failures(zone, tmp_path, "become_su_failures.yml", "bob", {"su_user": "root", "su_password": ROOT_SECRET})
    assert "not-the-su-password" not in output + zone["executor"].log()
