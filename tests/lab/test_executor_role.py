# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The natsops.fleet.executor role on real systemd hosts, installed offline from a wheelhouse built from this
repository: a zone executor for 管理网 (SSH to the zone hosts) on the executor host and an agent-mode executor
for 业务网 with BK-Lite compatibility; idempotent, check mode clean, restarted on a config change and checked
through discovery after every run. Trust is the role's default: each executor requires requests signed by the
controller's key (which the role makes, in a file of this test's own) and has its own reply key, pinned in this
test's known_executors once per instance id."""

import re

import pytest

import devenv
import fleetkit
from bklite_client import BkliteServerClient

pytestmark = pytest.mark.lab(hosts=4, zone_hosts=2)


@pytest.fixture(scope="module")
def fleet(lab, wheelhouse, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("executors")
    server = devenv.NatsServer(listen=lab.info["controller_address"])
    zone_gw = lab.host(lab.info["executor_hosts"][0])
    agent = [h for h in lab.hosts if "mgmt" in h["addresses"] and h["role"] != "executor"][-1]
    zone_hosts = [h for h in lab.hosts if h["networks"] == ["zone"]][:2]
    inventory = scratch / "inventory.json"
    controller_key = str(scratch / "controller" / "signing.nk")  # made by the role
    known = str(scratch / "known_executors")

    def write(zone_instances=("管理网",), max_jobs=32):
        return fleetkit.write_inventory(lab, inventory, {"executors": {
            "vars": {"executor_servers": [server.url], "executor_wheelhouse": wheelhouse, "executor_max_jobs": max_jobs,
                     "executor_controller_signing_key": controller_key, "executor_known_executors_file": known},
            "hosts": {
                zone_gw["name"]: {"ansible_host": zone_gw["addresses"]["mgmt"], "executor_instances": list(zone_instances),
                                  "executor_ssh_identities": {"default": lab.info["ssh_private_key_file"]},
                                  "executor_ssh_known_hosts": lab.known_hosts(zone_hosts).splitlines()},
                agent["name"]: {"ansible_host": agent["addresses"]["mgmt"], "executor_instances": ["业务网"],
                                "executor_bklite_compat": True, "executor_sandbox": False}}}})

    try:
        yield {"nats": server, "zone_gw": zone_gw, "agent": agent, "zone_hosts": zone_hosts, "write": write,
               "controller_key": controller_key, "known": known}
    finally:
        fleetkit.remove_units(lab, (zone_gw, agent), "natsops-executor")
        server.stop()


def _play(inventory, *extra):
    return fleetkit.changed_counts(fleetkit.play("executors.yml", inventory, *extra))


def _client(fleet, instance, target=None):
    from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # pylint: disable=import-outside-toplevel
    return ExecutorClient({"servers": [fleet["nats"].url], "signing_key": fleet["controller_key"],
                           "known_executors": fleet["known"]}, instance, target=target).connect()


def _executor_key(lab, host):
    return fleetkit.host_public_key(lab, host["name"], "/etc/natsops/signing.nk", "/opt/natsops-executor/bin/python")


def test_executors_in_two_zones_from_a_wheelhouse(lab, fleet):
    inventory = fleet["write"]()
    assert max(_play(inventory)) > 0
    assert max(_play(inventory)) == 0
    assert max(_play(inventory, "--check")) == 0
    state = lab.ssh(fleet["zone_gw"]["name"],
                    "systemctl is-active natsops-executor; ps -o user= -p $(systemctl show -p MainPID --value natsops-executor); "
                    "stat -c '%U:%G %a' /etc/natsops/executor.yml /etc/natsops/ssh/default").stdout.split()
    assert state == ["active", "natsops", "root:natsops", "640", "natsops:natsops", "600"], state
    # trust: the controller's key (made by the role) is the one trusted signer; the reply key is the executor's own
    config = lab.ssh(fleet["zone_gw"]["name"], "cat /etc/natsops/executor.yml; stat -c '%U:%G %a' /etc/natsops/signing.nk").stdout
    assert 'trusted_signers: ["%s"]' % fleetkit.public_key(fleet["controller_key"]) in config, config
    assert "require_signatures: true" in config and 'signing_key: "/etc/natsops/signing.nk"' in config, config
    assert config.split()[-2:] == ["natsops:natsops", "600"], config
    owners = {"管理网": fleet["zone_gw"], "业务网": fleet["agent"]}
    assert sorted(fleetkit.pins(fleet["known"])) == sorted(
        (instance, _executor_key(lab, host), "natsops.fleet.executor %s natsops-executor" % host["name"])
        for instance, host in owners.items())

    zone_host = fleet["zone_hosts"][0]
    assert fleetkit.hostname_through(_client(fleet, "管理网", target={"host": zone_host["addresses"]["zone"], "user": "root"})) \
        == zone_host["name"]
    assert fleetkit.hostname_through(_client(fleet, "业务网")) == fleet["agent"]["name"]
    assert BkliteServerClient(fleet["nats"].url, "业务网").health_check()["status"] == "ok"


def test_a_config_change_restarts_and_is_verified(lab, fleet):
    host = fleet["zone_gw"]["name"]
    pid = lab.ssh(host, "systemctl show -p MainPID --value natsops-executor").stdout.strip()
    # the seed's other failure: a changed instance id that a running executor never picked up
    inventory = fleet["write"](zone_instances=("管理网", "管理网-备"), max_jobs=16)
    assert max(_play(inventory)) > 0
    assert lab.ssh(host, "systemctl show -p MainPID --value natsops-executor").stdout.strip() != pid
    client = _client(fleet, "管理网-备")
    try:
        served = [e for e in client.discover() if e["hostname"] == host]
    finally:
        client.close()
    assert [sorted(e["instances"]) for e in served] == [["管理网", "管理网-备"]]
    assert max(_play(inventory)) == 0
    # the zone executor's pins follow its instance ids, in place; the agent's line stays as it was
    key = _executor_key(lab, fleet["zone_gw"])
    assert [p[:2] for p in fleetkit.pins(fleet["known"]) if p[1] == key] == [("管理网", key), ("管理网-备", key)]
    assert [p[0] for p in fleetkit.pins(fleet["known"])].count("业务网") == 1


def test_the_role_restarts_the_executor_while_a_playbook_runs_through_it(lab, fleet, tmp_path):
    """Issue 17: a configuration change makes the role's handler restart the zone executor while a playbook runs
    through it; the executor drains, the connection plugin waits for it (executor_wait, default 30 s): no task fails
    and each runs exactly once (one line per task in a file on the zone host)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import time  # pylint: disable=import-outside-toplevel
    count = 300
    zone_host = fleet["zone_hosts"][1]
    ledger = "/root/natsops-restart-ledger"
    lab.ssh(zone_host["name"], "rm -f %s" % ledger)
    inventory = fleetkit.write_inventory(lab, tmp_path / "ledger.json", {"zone": {"hosts": {zone_host["name"]: {
        "ansible_host": zone_host["addresses"]["zone"], "ansible_connection": "natsops.fleet.nats", "ansible_nats_mode": "ssh",
        "ansible_nats_executor": "管理网", "ansible_nats_servers": fleet["nats"].url,
        "ansible_nats_signing_key": fleet["controller_key"], "ansible_nats_known_executors": fleet["known"]}}}})
    playbook = tmp_path / "ledger.yml"
    playbook.write_text(
        "- name: One line per task\n  hosts: zone\n  gather_facts: false\n  tasks:\n"
        "    - name: One line\n      ansible.builtin.shell: \"sleep 0.05; echo {{ item }} >> %s\"\n"
        "      loop: \"{{ range(%d) | list }}\"\n      changed_when: true\n" % (ledger, count), encoding="utf-8")
    host = fleet["zone_gw"]["name"]
    pid = lab.ssh(host, "systemctl show -p MainPID --value natsops-executor").stdout.strip()
    running = subprocess.Popen([devenv.tool("ansible-playbook"), "-i", inventory, str(playbook)],  # pylint: disable=consider-using-with
                               env=devenv.ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while int(lab.ssh(zone_host["name"], "cat %s 2>/dev/null | wc -l" % ledger).stdout.strip() or 0) < 10:
            assert running.poll() is None and time.monotonic() < deadline, "the playbook did not start its tasks"
            time.sleep(0.5)
        # a changed max_jobs: the configuration changes and the handler restarts the executor
        inventory_roles = fleet["write"](zone_instances=("管理网", "管理网-备"), max_jobs=20)
        restarted = fleetkit.play("executors.yml", inventory_roles, "--limit", host)
        assert max(fleetkit.changed_counts(restarted)) > 0
        assert "RUNNING HANDLER [natsops.fleet.executor : Restart the executor]" in restarted.stdout, restarted.stdout[-3000:]
        assert lab.ssh(host, "systemctl show -p MainPID --value natsops-executor").stdout.strip() != pid
        done_before = int(lab.ssh(zone_host["name"], "wc -l < %s" % ledger).stdout.strip())
        assert running.poll() is None and done_before < count, "the playbook ended before the restart: make it longer"
        output = running.communicate(timeout=600)[0]
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 0, output[-4000:]
    assert re.search(r"changed=1\s+unreachable=0\s+failed=0", output), output[-3000:]
    lines = lab.ssh(zone_host["name"], "cat %s" % ledger).stdout.split()
    assert sorted(int(line) for line in lines) == list(range(count)), "each task ran exactly once"
