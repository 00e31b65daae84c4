# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The natsops.fleet.probe role and playbooks/install_probes.yml on real hosts, from bare zone hosts to a playbook
that reaches every host through its own probe. The controller is on the management network only: NATS and the
zone executor for 管理网 run on the executor host (playbooks/site.yml), which the zone hosts reach on the zone
network; the probes are rolled out through that executor, never by SSH from the controller. The lab's own ssh
(through its jump host) only reads results back. Every request is signed with the controller's key, which the
executor role made in a file of this test's own; the zone executor and every probe require it, and the controller
pins their keys in this test's known_executors."""

import json
import os
import re
import shutil
import subprocess

import pytest

import devenv
import fleetkit

pytestmark = pytest.mark.lab(hosts=2, zone_hosts=6)

ZONE = "管理网"
GOOD = 5
UPGRADE_VERSION = "0.1.0.post900"
RESET = ("systemctl disable --now natsops-probe 2>/dev/null; rm -rf /etc/systemd/system/natsops-probe.service /opt/natsops-probe "
         "/opt/natsops-probe-wheelhouse /opt/natsops-probe-wheelhouse.tar /etc/natsops-probe /opt/natsops-probes "
         "/usr/local/bin/hello-probe /root/natsops-agent-check; systemctl daemon-reload")


@pytest.fixture(scope="module")
def fleet(lab, wheelhouse, tmp_path_factory):
    """NATS (JetStream, listening on both of its networks) and the zone executor on the executor host, installed
    by playbooks/site.yml; six bare zone hosts (the sixth is given a NATS URL nobody listens on)."""
    scratch = tmp_path_factory.mktemp("probes")
    gw = lab.host(lab.info["executor_hosts"][0])
    hosts = [h for h in lab.hosts if h["networks"] == ["zone"]][:GOOD + 1]
    for host in hosts:
        lab.ssh(host["name"], RESET)
    # a JetStream store or a server another test left on this host
    lab.ssh(gw["name"], "systemctl stop nats-server 2>/dev/null; rm -rf /var/lib/nats-server/jetstream")
    controller_key = str(scratch / "controller" / "signing.nk")  # made by the executor role
    known = str(scratch / "known_executors")
    site = fleetkit.write_inventory(lab, scratch / "site.json", {
        "nats_servers": {"vars": {"nats_server_install_method": "local", "nats_server_local_file": devenv.tool("nats-server"),
                                  "nats_server_allow_anonymous": True},
                         "hosts": {gw["name"]: {"ansible_host": gw["addresses"]["mgmt"]}}},
        "executors": {"vars": {"executor_servers": ["nats://127.0.0.1:4222"], "executor_wheelhouse": wheelhouse,
                               "executor_controller_signing_key": controller_key, "executor_known_executors_file": known},
                      "hosts": {gw["name"]: {"ansible_host": gw["addresses"]["mgmt"], "executor_instances": [ZONE],
                                             "executor_ssh_identities": {"default": lab.info["ssh_private_key_file"]},
                                             "executor_ssh_known_hosts": lab.known_hosts(hosts).splitlines()}}}})
    controller_url = "nats://%s:4222" % gw["addresses"]["mgmt"]
    probe_url = "nats://%s:4222" % gw["addresses"]["zone"]
    try:
        fleetkit.changed_counts(fleetkit.play("site.yml", site))
        probe_vars = {
            "ansible_connection": "natsops.fleet.nats", "ansible_nats_mode": "ssh", "ansible_nats_executor": ZONE,
            "ansible_nats_servers": controller_url, "ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_nats_signing_key": controller_key, "ansible_nats_known_executors": known,
            "probe_servers": [probe_url], "probe_wheelhouse": wheelhouse, "probe_heartbeat_interval": 5,
            "probe_registry_ttl": 30, "probe_register_timeout": 40, "probe_artifact_dir": str(scratch / "artifacts")}
        members = {h["name"]: {"ansible_host": h["addresses"]["zone"]} for h in hosts}
        # its probe is told a port nobody listens on: it installs, starts, and never registers
        members[hosts[-1]["name"]].update(probe_servers=["nats://%s:4299" % gw["addresses"]["zone"]], probe_register_timeout=12)
        inventory = str(scratch / "probes.json")
        with open(inventory, "w", encoding="utf-8") as handle:
            json.dump({"all": {"children": {"probes": {"vars": probe_vars, "hosts": members}}}}, handle, ensure_ascii=False)
        registry = str(scratch / "natsops.probes.yml")
        with open(registry, "w", encoding="utf-8") as handle:
            handle.write("plugin: natsops.fleet.probes\nservers: %s\nstale_after: 20\n"
                         "keyed_groups:\n  - key: natsops_probe.arch\n    prefix: arch\n" % controller_url)
        yield {"gw": gw, "hosts": hosts, "good": hosts[:GOOD], "bad": hosts[GOOD], "inventory": inventory,
               "registry": registry, "scratch": scratch, "wheelhouse": wheelhouse, "url": controller_url,
               "controller_key": controller_key, "known": known}
    finally:
        for host in hosts:
            lab.ssh(host["name"], RESET)
        fleetkit.remove_units(lab, [gw], "natsops-executor")
        fleetkit.remove_units(lab, [gw], "nats-server")


def _install(fleet, *extra):
    return fleetkit.play("install_probes.yml", fleet["inventory"], *extra)


def _recap(result):
    """{host: {"changed": n, "failed": n, "unreachable": n}} from the play recap."""
    found = {}
    for name, changed, unreachable, failed in re.findall(
            r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", result.stdout, re.M):
        found[name] = {"changed": int(changed), "unreachable": int(unreachable), "failed": int(failed)}
    return found


def _registered(fleet):
    """The hosts the inventory plugin builds from the registry: {name: hostvars}."""
    result = subprocess.run([devenv.tool("ansible-inventory"), "-i", fleet["registry"], "--list"], env=devenv.ansible_env(),
                            capture_output=True, text=True, timeout=120, check=True)
    # ansible-core 2.19 marks strings that are not templates ({"__ansible_unsafe": ...}); the values are what count
    data = json.loads(result.stdout, object_hook=lambda d: d["__ansible_unsafe"] if list(d) == ["__ansible_unsafe"] else d)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    return {name: hostvars[name] for name in data.get("natsops_probes", {}).get("hosts", [])}, data


def test_rollout_through_the_zone_executor_registers_every_host_and_names_the_one_that_cannot(lab, fleet):
    result = _install(fleet)
    recap = _recap(result)
    bad = fleet["bad"]["name"]
    assert result.returncode != 0, result.stdout[-4000:]
    assert recap[bad]["failed"] == 1, result.stdout[-4000:]
    for host in fleet["good"]:
        assert recap[host["name"]]["failed"] == 0 and recap[host["name"]]["unreachable"] == 0, result.stdout[-3000:]
        assert recap[host["name"]]["changed"] > 0
    # the failure says which host, zone, executor and what the probe itself last said
    message = next(line for line in result.stdout.splitlines() if "not registered" in line and bad in line)
    for part in ("node id %s" % bad, "zone '%s'" % ZONE, "executor %s" % ZONE, "NRestarts="):
        assert part in message, message
    # the probe's own words, whichever its last attempt logged
    assert re.search(r"last error: .*(cannot connect to NATS|Connect call failed)[^;]*4299", message), message

    registered, data = _registered(fleet)
    assert sorted(registered) == sorted(h["name"] for h in fleet["good"]), data
    for host in fleet["good"]:
        hv = registered[host["name"]]
        assert hv["ansible_connection"] == "natsops.fleet.nats" and hv["ansible_nats_executor"] == host["name"], hv
        record = hv["natsops_probe"]
        assert record["zone"] == ZONE and record["probe_version"] == "0.1.0", record
        assert host["addresses"]["zone"] in record["addresses"], record
        assert lab.ssh(host["name"], "systemctl is-active natsops-probe").stdout.strip() == "active"
    assert sorted(data["arch_x86_64"]["hosts"]) == sorted(registered)

    # trust: each probe requires requests signed by the controller's key and has its own reply key, pinned for its
    # node id next to the zone executor's pin for the zone
    controller = fleetkit.public_key(fleet["controller_key"])
    pins = fleetkit.pins(fleet["known"])
    gw_key = fleetkit.host_public_key(lab, fleet["gw"]["name"], "/etc/natsops/signing.nk", "/opt/natsops-executor/bin/python")
    assert (ZONE, gw_key, "natsops.fleet.executor %s natsops-executor" % fleet["gw"]["name"]) in pins
    for host in fleet["good"]:
        conf = lab.ssh(host["name"], "cat /etc/natsops-probe/executor.yml; stat -c '%U %a' /etc/natsops-probe/signing.nk").stdout
        assert 'trusted_signers: ["%s"]' % controller in conf and "require_signatures: true" in conf, conf
        assert conf.split()[-2:] == ["root", "600"], conf
        key = fleetkit.host_public_key(lab, host["name"], "/etc/natsops-probe/signing.nk", "/opt/natsops-probe/bin/python")
        assert (host["name"], key, "natsops.fleet.executor %s natsops-probe" % host["name"]) in pins, pins


def test_a_playbook_through_the_inventory_plugin_reaches_every_host_in_agent_mode(lab, fleet, tmp_path):
    playbook = tmp_path / "agent.yml"
    playbook.write_text(
        "- name: Through each host's own probe\n  hosts: natsops_probes\n  gather_facts: false\n  tasks:\n"
        "    - name: Write a file as the probe\n      ansible.builtin.copy:\n"
        "        content: \"{{ inventory_hostname }} via {{ ansible_nats_executor }} ({{ ansible_connection }})\\n\"\n"
        "        dest: /root/natsops-agent-check\n        mode: \"0600\"\n", encoding="utf-8")
    # signed with the controller's key, each reply checked against the probe's pinned key
    trust = ["-e", json.dumps({"ansible_nats_signing_key": fleet["controller_key"], "ansible_nats_known_executors": fleet["known"]})]
    result = subprocess.run([devenv.tool("ansible-playbook"), "-i", fleet["registry"], str(playbook)] + trust,
                            env=devenv.ansible_env(), capture_output=True, text=True, timeout=600, check=False)
    assert fleetkit.changed_counts(result) == [1] * GOOD, result.stdout[-3000:]
    for host in fleet["good"]:
        text = lab.ssh(host["name"], "cat /root/natsops-agent-check").stdout
        assert text == "%s via %s (natsops.fleet.nats)\n" % (host["name"], host["name"]), text

    # an unsigned request to a probe is refused and never runs
    from ansible_collections.natsops.fleet.plugins.module_utils._client import (  # pylint: disable=import-outside-toplevel
        CallerTrust, ExecutorClient, ExecutorTaskError,
    )
    from ansible_collections.natsops.fleet.plugins.module_utils.wire.signing import E_UNSIGNED  # pylint: disable=import-outside-toplevel
    probe = fleet["good"][0]["name"]
    with pytest.raises(ExecutorTaskError) as refused:
        fleetkit.hostname_through(ExecutorClient({"servers": [fleet["url"]]}, probe, trust=CallerTrust(None, fleet["known"])).connect())
    assert refused.value.code == E_UNSIGNED, refused.value


def test_a_rerun_changes_nothing(fleet):
    limit = ("--limit", ",".join(h["name"] for h in fleet["good"]))
    fleetkit.recap(_install(fleet, *limit), changed=0)
    fleetkit.recap(_install(fleet, "--check", *limit), changed=0)


def test_an_upgrade_is_rolled_out_in_batches_and_registers_the_new_version(lab, fleet):
    newer = str(fleet["scratch"] / "wheelhouse-upgrade")
    os.makedirs(newer)
    for name in os.listdir(fleet["wheelhouse"]):
        if not name.startswith("natsops_executor-"):
            shutil.copy(os.path.join(fleet["wheelhouse"], name), newer)
    fleetkit.build_wheelhouse(newer, str(fleet["scratch"] / "source-upgrade"), version=UPGRADE_VERSION)
    hosts = fleet["good"][:2]
    result = _install(fleet, "--limit", ",".join(h["name"] for h in hosts), "-e", "probe_wheelhouse=%s" % newer,
                      "-e", "probe_serial=1")
    assert max(fleetkit.changed_counts(result)) > 0
    registered = _registered(fleet)[0]
    versions = {name: hv["natsops_probe"]["probe_version"] for name, hv in registered.items()}
    assert versions == dict((h["name"], UPGRADE_VERSION if h in hosts else "0.1.0") for h in fleet["good"]), versions
    assert lab.ssh(hosts[0]["name"], "/opt/natsops-probe/bin/natsops-executor --version").stdout.strip().endswith(UPGRADE_VERSION)


def test_a_third_party_probe_from_an_artifact_an_install_command_and_a_check(lab, fleet):
    artifact = fleet["scratch"] / "hello-probe"
    artifact.write_text("#!/bin/sh\necho hello-probe ok\n", encoding="utf-8")
    custom = {"probe_custom": {"name": "hello", "artifact": str(artifact),
                               "install": 'install -m 0755 "$PROBE_ARTIFACT" /usr/local/bin/hello-probe',
                               "check": "/usr/local/bin/hello-probe | grep -q ok", "remove": "rm -f /usr/local/bin/hello-probe"}}
    limit = ("--limit", ",".join(h["name"] for h in fleet["good"][:2]))
    fleetkit.recap(_install(fleet, "-e", json.dumps(custom), *limit), changed=1)
    for host in fleet["good"][:2]:
        assert lab.ssh(host["name"], "/usr/local/bin/hello-probe").stdout == "hello-probe ok\n"
    fleetkit.recap(_install(fleet, "-e", json.dumps(custom), *limit), changed=0)
    fleetkit.recap(_install(fleet, "-e", json.dumps(dict(custom, probe_state="absent")), *limit), changed=1)
    for host in fleet["good"][:2]:
        assert lab.ssh(host["name"], "test -e /usr/local/bin/hello-probe || test -e /opt/natsops-probes/hello; echo $?") \
            .stdout.strip() == "1"


def test_uninstall_leaves_nothing_running(lab, fleet):
    removed = _install(fleet, "-e", "probe_state=absent")
    fleetkit.recap(removed, changed=1)
    # no template errors from the third-party probe's task names (probe_custom is {} here), nor any other warning
    assert "[WARNING]" not in removed.stdout + removed.stderr, (removed.stdout + removed.stderr)[-3000:]
    for host in fleet["hosts"]:
        state = lab.ssh(host["name"], "systemctl is-active natsops-probe; pgrep -f '[n]atsops-executor' || echo none; "
                                      "ls -d /opt/natsops-probe /opt/natsops-probe-* /etc/natsops-probe 2>/dev/null | wc -l").stdout.split()
        assert state[-2:] == ["none", "0"] and state[0] in ("inactive", "unknown"), (host["name"], state)
    assert not _registered(fleet)[0]
    fleetkit.recap(_install(fleet, "-e", "probe_state=absent"), changed=0)
