# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""executor_info and playbooks/diagnose.yml against a real nats-server and executor."""

from __future__ import annotations

import json
import os
import subprocess

import devenv
from conftest import ROOT


def _ansible(args, timeout=120):
    return subprocess.run([devenv.tool("ansible")] + args, env=devenv.ansible_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _module(nats_server, extra):
    args = "servers=%s %s" % (nats_server.url, extra)
    result = _ansible(["localhost", "-c", "local", "-e", "ansible_python_interpreter=%s" % devenv.tool("python"),
                       "-m", "natsops.fleet.executor_info", "-a", args, "-o"])
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.split(" => ", 1)[1])


def test_executor_info_lists_executors_and_instance_ids(nats_server, executor):
    found = _module(nats_server, "")
    assert found["changed"] is False
    mine = [e for e in found["executors"] if "e2e-host" in e["instances"]]
    assert len(mine) == 1 and mine[0]["ssh"] is True and mine[0]["load"]["max_jobs"] == 32
    assert set(found["instances"]) >= {"e2e-host", "default"}
    only = _module(nats_server, "instance_id=管理网")
    assert only["executors"] == [] and "管理网" not in only["instances"]


def test_executor_info_query(nats_server, executor):
    found = _module(nats_server, "query='[?contains(instances, `default`)].hostname'")
    assert found["query_result"] == [executor_hostname(found)]
    bad = _ansible(["localhost", "-c", "local", "-e", "ansible_python_interpreter=%s" % devenv.tool("python"),
                    "-m", "natsops.fleet.executor_info", "-a", "servers=%s query='[?'" % nats_server.url])
    assert bad.returncode != 0 and "not a valid JMESPath expression" in bad.stdout


def executor_hostname(found):
    return [e for e in found["executors"] if "default" in e["instances"]][0]["hostname"]


def test_executor_info_reports_an_unreachable_nats():
    result = _ansible(["localhost", "-c", "local", "-e", "ansible_python_interpreter=%s" % devenv.tool("python"),
                       "-m", "natsops.fleet.executor_info", "-a", "servers=nats://127.0.0.1:1 connect_timeout=2"])
    assert result.returncode != 0 and "cannot connect to NATS" in result.stdout, result.stdout


def _inventory(tmp_path, nats_server, hosts):
    data = {"all": {"vars": {"ansible_connection": "natsops.fleet.nats", "ansible_nats_servers": nats_server.url},
                    "hosts": hosts}}
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(data, ensure_ascii=False))
    return str(path)


def _diagnose(inventory, nats_server, *extra):
    return subprocess.run([devenv.tool("ansible-playbook"), "-i", inventory, os.path.join(ROOT, "playbooks", "diagnose.yml"),
                           "-e", "natsops_servers=%s" % nats_server.url] + list(extra),
                          env=devenv.ansible_env(), capture_output=True, text=True, timeout=300, check=False)


def test_diagnose_finds_the_seed_incident_before_it_bites(tmp_path, nats_server, executor):
    # the executor serves 'default' and 'e2e-host'; one host addresses '管理网'
    inventory = _inventory(tmp_path, nats_server, {
        "e2e-host": {}, "zone-host": {"ansible_nats_executor": "default"}, "seed-host": {"ansible_nats_executor": "管理网"}})
    result = _diagnose(inventory, nats_server)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "1 inventory host(s) address an instance id that no executor serves" in output, output
    assert "seed-host -> '管理网'" in output and "'default'" in output and "e2e-host" in output
    assert "zone-host ->" not in output
    relaxed = _diagnose(inventory, nats_server, "-e", "natsops_diagnose_strict=false")
    assert relaxed.returncode == 0 and "管理网" in relaxed.stdout


def test_diagnose_passes_when_everything_is_served(tmp_path, nats_server, executor):
    inventory = _inventory(tmp_path, nats_server, {"e2e-host": {}, "zone-host": {"ansible_nats_executor": "default"}})
    result = _diagnose(inventory, nats_server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "addressing an instance id nobody serves: 0" in result.stdout
