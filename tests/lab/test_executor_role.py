# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The natsops.fleet.executor role on real systemd hosts, installed offline from a wheelhouse built from this
repository: a zone executor for 管理网 (SSH to the zone hosts) on the executor host and an agent-mode executor
for 业务网 with BK-Lite compatibility; idempotent, check mode clean, restarted on a config change and checked
through discovery after every run."""

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

    def write(zone_instances=("管理网",), max_jobs=32):
        return fleetkit.write_inventory(lab, inventory, {"executors": {
            "vars": {"executor_servers": [server.url], "executor_wheelhouse": wheelhouse, "executor_max_jobs": max_jobs},
            "hosts": {
                zone_gw["name"]: {"ansible_host": zone_gw["addresses"]["mgmt"], "executor_instances": list(zone_instances),
                                  "executor_ssh_identities": {"default": lab.info["ssh_private_key_file"]},
                                  "executor_ssh_known_hosts": lab.known_hosts(zone_hosts).splitlines()},
                agent["name"]: {"ansible_host": agent["addresses"]["mgmt"], "executor_instances": ["业务网"],
                                "executor_bklite_compat": True, "executor_sandbox": False}}}})

    try:
        yield {"nats": server, "zone_gw": zone_gw, "agent": agent, "zone_hosts": zone_hosts, "write": write}
    finally:
        fleetkit.remove_units(lab, (zone_gw, agent), "natsops-executor")
        server.stop()


def _play(inventory, *extra):
    return fleetkit.changed_counts(fleetkit.play("executors.yml", inventory, *extra))


def _client(fleet, instance, target=None):
    from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # pylint: disable=import-outside-toplevel
    return ExecutorClient({"servers": [fleet["nats"].url]}, instance, target=target).connect()


def test_executors_in_two_zones_from_a_wheelhouse(lab, fleet):
    inventory = fleet["write"]()
    assert max(_play(inventory)) > 0
    assert max(_play(inventory)) == 0
    assert max(_play(inventory, "--check")) == 0
    state = lab.ssh(fleet["zone_gw"]["name"],
                    "systemctl is-active natsops-executor; ps -o user= -p $(systemctl show -p MainPID --value natsops-executor); "
                    "stat -c '%U:%G %a' /etc/natsops/executor.yml /etc/natsops/ssh/default").stdout.split()
    assert state == ["active", "natsops", "root:natsops", "640", "natsops:natsops", "600"], state

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
