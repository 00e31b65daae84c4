# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Probes against a real nats-server: executors in probe mode (--register) write their records into the
registry bucket; natsops.fleet.probe_info reads them; the natsops.fleet.probes inventory plugin turns them
into hosts that a playbook reaches through their own probe; a probe killed goes stale, one stopped leaves."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time

import nats
import nats.js.errors
import yaml

import devenv

SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else devenv.tool("python")


async def _keys(url, bucket):
    nc = await nats.connect(url)
    try:
        try:
            return sorted(await (await nc.jetstream().key_value(bucket)).keys())
        except nats.js.errors.NoKeysError:
            return []
    finally:
        await nc.close()


def _wait_keys(url, bucket, wanted, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = asyncio.run(_keys(url, bucket))
        if keys == wanted:
            return
        time.sleep(0.2)
    raise AssertionError("registry keys %s, wanted %s" % (keys, wanted))


def _inventory(tmp_path, url, **options):
    path = tmp_path / "fleet.probes.yml"
    config = {"plugin": "natsops.fleet.probes", "servers": url, "namespace": "probes-e2e", "stale_after": 3,
              "keyed_groups": [{"key": "natsops_probe.zone", "prefix": "zone"}],
              "compose": {"ansible_python_interpreter": "'%s'" % SYSTEM_PYTHON}}
    config.update(options)
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _ansible_inventory(path):
    out = subprocess.run([devenv.tool("ansible-inventory"), "-i", path, "--list"], env=devenv.ansible_env(),
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    # ansible-core 2.19 marks strings that are not templates ({"__ansible_unsafe": ...}); the values are what count
    return json.loads(out.stdout, object_hook=lambda d: d["__ansible_unsafe"] if list(d) == ["__ansible_unsafe"] else d)


def test_probes_register_inventory_and_reach(module_task, nats_server, tmp_path):
    url = nats_server.url
    bucket = "probes-e2e_registry"
    # no registry yet: probe_info says so clearly
    missing = module_task("probe_info", {"namespace": "probes-e2e"})
    assert missing["failed"] and "probe registry bucket probes-e2e_registry does not exist" in missing["msg"], missing
    assert module_task("kv", {"bucket": bucket, "ttl": "2m"})["changed"]

    probes = []
    try:
        for node, zone in (("web1", "zone-a"), ("web2", "zone-b")):
            probes.append(devenv.ExecutorProcess(url, [node], log_dir=str(tmp_path), extra_args=[
                "--namespace", "probes-e2e", "--register", "--zone", zone, "--heartbeat-interval", "1"]))
        _wait_keys(url, bucket, ["web1", "web2"])

        info = module_task("probe_info", {"namespace": "probes-e2e", "query": "[?zone=='zone-a'].node_id"}, check=True)
        assert info["count"] == 2 and info["query_result"] == ["web1"] and info["stale"] == [], info
        web1 = info["probes"][0]
        assert web1["node_id"] == "web1" and web1["hostname"] == socket.gethostname() and web1["zone"] == "zone-a"
        assert web1["addresses"] and web1["arch"] and web1["os"]["id"] and web1["probe_version"]
        assert web1["age"] < 3 and web1["heartbeats"] >= 1

        # the inventory: one host per probe, set up for its own probe, grouped by zone
        path = _inventory(tmp_path, url)
        listed = _ansible_inventory(path)
        assert sorted(listed["natsops_probes"]["hosts"]) == ["web1", "web2"]
        assert listed["zone_zone_a"]["hosts"] == ["web1"] and listed["zone_zone_b"]["hosts"] == ["web2"]
        hostvars = listed["_meta"]["hostvars"]["web2"]
        assert hostvars["ansible_connection"] == "natsops.fleet.nats" and hostvars["ansible_nats_executor"] == "web2"
        assert hostvars["ansible_nats_namespace"] == "probes-e2e" and hostvars["natsops_probe"]["zone"] == "zone-b"

        # a playbook through the inventory plugin reaches every host through its own probe
        play = tmp_path / "touch.yml"
        play.write_text(yaml.safe_dump([{"hosts": "natsops_probes", "gather_facts": False, "tasks": [
            {"ansible.builtin.copy": {"content": "{{ inventory_hostname }} {{ natsops_probe.zone }}\n",
                                      "dest": str(tmp_path / "{{ inventory_hostname }}.txt")}}]}]))
        ran = subprocess.run([devenv.tool("ansible-playbook"), "-i", path, str(play)], env=devenv.ansible_env(),
                             capture_output=True, text=True, timeout=300, check=False)
        assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
        assert (tmp_path / "web1.txt").read_text() == "web1 zone-a\n" and (tmp_path / "web2.txt").read_text() == "web2 zone-b\n"
        for probe in probes:
            assert "%s" % probe.instances[0] in probe.output() and "registered as" in probe.output()

        # filters keep what matches
        listed = _ansible_inventory(_inventory(tmp_path, url, filters=["natsops_probe.zone == 'zone-b'"]))
        assert listed["natsops_probes"]["hosts"] == ["web2"]

        # a probe killed (no goodbye) goes stale: left out, or flagged with include_stale
        probes[1].stop(signal.SIGKILL)
        time.sleep(4.5)
        info = module_task("probe_info", {"namespace": "probes-e2e", "stale_after": 3}, check=True)
        assert info["stale"] == ["web2"] and info["count"] == 2
        assert _ansible_inventory(_inventory(tmp_path, url))["natsops_probes"]["hosts"] == ["web1"]
        flagged = _ansible_inventory(_inventory(tmp_path, url, include_stale=True))
        assert flagged["natsops_probes_stale"]["hosts"] == ["web2"] and sorted(flagged["natsops_probes"]["hosts"]) == ["web1", "web2"]

        # a probe stopped cleanly leaves the registry at once
        assert probes[0].stop() == 0
        _wait_keys(url, bucket, ["web2"], timeout=5)
        assert "unregistered web1" in probes[0].output()
    finally:
        for probe in probes:
            if probe.proc.poll() is None:
                probe.stop()
    module_task("kv", {"bucket": bucket, "state": "absent"})


def test_probe_mode_refuses_bad_configuration(tmp_path):
    for args, message in ((["--instance", "a", "--instance", "b"], "exactly one instance id"),
                          (["--instance", "管理网"], "probe node id"),
                          (["--instance", "*"], "instance id '*'"),
                          (["--instance", "web1", "--heartbeat-interval", "0"], "heartbeat_interval")):
        out = subprocess.run([devenv.tool("natsops-executor"), "--register"] + args + ["--check-config"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
