# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests of the lab itself: real hosts boot, users and sudo work, the zone net is isolated, teardown is complete."""

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import labctl

pytestmark = pytest.mark.lab(hosts=2, zone_hosts=1)


def _ok(proc):
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc.stdout.strip()


def _lab_links():
    return sorted(name for name in os.listdir("/sys/class/net") if name.startswith("nfl-") or labctl.LAB_VETH_RE.match(name))


def _lab_mounts():
    with open("/proc/mounts", encoding="utf-8") as mounts:
        return [line for line in mounts if str(labctl.STATE_DIR) in line or str(labctl.CACHE_DIR) in line]


def _lab_pids():
    """systemd-nspawn PIDs from the state plus every process in the hosts' cgroups."""
    pids = set()
    for host in labctl.status()["hosts"]:
        pids.add(host["pid"])
        for cgroup in host["cgroups"]:
            pids.update(labctl._cgroup_pids(cgroup))  # pylint: disable=protected-access
    return pids


def _alive(pid):
    stat = labctl._proc_stat(pid)  # pylint: disable=protected-access
    return stat is not None and stat[0] not in ("Z", "X")


def test_hosts_reach_running(lab):
    for host in lab.hosts:
        proc = lab.ssh(host["name"], "timeout 60 systemctl is-system-running --wait")
        if proc.stdout.strip() != "running":
            failed = lab.ssh(host["name"], "systemctl --failed --no-legend --plain").stdout
            pytest.fail(f"{host['name']} is {proc.stdout.strip()!r}, failed units:\n{failed}")


def test_hostnames_and_addresses(lab):
    for host in lab.hosts:
        assert _ok(lab.ssh(host["name"], "hostname")) == host["name"]
        addresses = _ok(lab.ssh(host["name"], "ip -4 -o addr show scope global"))
        found = sorted(re.findall(r"inet (10\.213\.\d+\.\d+)/24", addresses))
        assert found == sorted(host["addresses"].values()), addresses


def test_ssh_key_login_for_every_user(lab):
    name = lab.on_network("mgmt")[-1]["name"]
    for user in ("root", "alice", "bob"):
        assert _ok(lab.ssh(name, "id -un", user=user)) == user


def test_alice_sudo_without_password(lab):
    assert _ok(lab.ssh(lab.hosts[0]["name"], "sudo -n id -un", user="alice")) == "root"


def test_bob_sudo_needs_his_password(lab):
    name = lab.hosts[0]["name"]
    denied = lab.ssh(name, "sudo -n true", user="bob")
    assert denied.returncode != 0
    assert "password is required" in denied.stderr
    password = lab.info["become_users"]["bob"]["password"]
    assert _ok(lab.ssh(name, "sudo -S -p '' id -un", user="bob", input_text=password + "\n")) == "root"
    wrong = lab.ssh(name, "sudo -S -p '' true", user="bob", input_text="not-his-password\n")
    assert wrong.returncode != 0


def test_hosts_write_only_their_own_overlay(lab):
    first, second = lab.on_network("mgmt")[:2]
    _ok(lab.ssh(first["name"], "echo written-on-first > /root/overlay-marker"))
    assert lab.ssh(second["name"], "test -e /root/overlay-marker").returncode == 1
    assert not (labctl.base_path() / "root/overlay-marker").exists()
    _ok(lab.ssh(first["name"], "rm /root/overlay-marker"))


def test_hosts_have_distinct_identities(lab):
    machine_ids = {_ok(lab.ssh(h["name"], "cat /etc/machine-id")) for h in lab.hosts}
    assert len(machine_ids) == len(lab.hosts)
    assert len({h["host_key"] for h in lab.hosts}) == len(lab.hosts)


def test_management_net_reachable_zone_net_not(lab):
    mgmt = lab.on_network("mgmt")[0]["addresses"]["mgmt"]
    with socket.create_connection((mgmt, 22), timeout=3) as conn:
        assert conn.recv(64).startswith(b"SSH-2.0-")
    zone_host = next(h for h in lab.hosts if h["networks"] == ["zone"])
    started = time.monotonic()
    with pytest.raises(OSError):
        with socket.create_connection((zone_host["addresses"]["zone"], 22), timeout=3):
            pass
    assert time.monotonic() - started < 4


def test_executor_host_reaches_zone_hosts(lab):
    executor = lab.by_role("executor")[0]["name"]
    zone_host = next(h for h in lab.hosts if h["networks"] == ["zone"])
    address = zone_host["addresses"]["zone"]
    _ok(lab.ssh(executor, f"timeout 3 bash -c '</dev/tcp/{address}/22'"))
    # With the lab key placed on the executor host, it logs in to the zone host.
    remote = f"ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@{address} hostname"
    assert _ok(lab.ssh(executor, remote)) == zone_host["name"]
    # A plain management host is not on the zone net.
    target = lab.by_role("target")[0]["name"]
    assert lab.ssh(target, f"timeout 3 bash -c '</dev/tcp/{address}/22'").returncode != 0
    # Humans and tests reach zone hosts through the executor host (ProxyJump in .lab/ssh_config).
    assert _ok(lab.ssh(zone_host["name"], "hostname")) == zone_host["name"]


@pytest.mark.usefixtures("lab")
def test_generated_files():
    info = json.loads(labctl.HOSTS_JSON.read_text(encoding="utf-8"))
    names = [h["name"] for h in info["hosts"]]
    assert {"lab-mgmt-1", "lab-mgmt-2", "lab-zone-1"} <= set(names)
    assert all(re.fullmatch(r"lab-(mgmt|zone)-\d+", name) for name in names)
    assert info["executor_hosts"] == ["lab-mgmt-1"]
    inventory = labctl.INVENTORY.read_text(encoding="utf-8")
    for text in ("lab_mgmt:", "lab_zone:", "lab_executor_hosts:", "ansible_python_interpreter", 'password: "bob-secret"'):
        assert text in inventory
    assert ".lab/" in (labctl.REPO_ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    ansible_inventory = subprocess.run(["ansible-inventory", "-i", str(labctl.INVENTORY), "--list"], capture_output=True,
                                       text=True, check=False) if labctl.shutil.which("ansible-inventory") else None
    if ansible_inventory is not None:
        parsed = json.loads(_ok(ansible_inventory))
        assert parsed["lab_executor_hosts"]["hosts"] == ["lab-mgmt-1"]
        assert parsed["_meta"]["hostvars"]["lab-zone-1"]["ansible_host"] == "10.213.1.11"


def test_up_after_crash(lab):
    """Kill every systemd-nspawn with SIGKILL (containers are orphaned), then a new up must clean up and work."""
    for host in labctl.status()["hosts"]:
        os.kill(host["pid"], signal.SIGKILL)
    time.sleep(0.5)
    crashed = labctl.status()
    assert not any(h["alive"] for h in crashed["hosts"])
    assert all(crashed["bridges"].values())
    lab.start()
    assert labctl.status()["running"]
    assert _ok(lab.ssh(lab.hosts[0]["name"], "hostname")) == lab.hosts[0]["name"]


def test_teardown_leaves_nothing(lab):
    pids = _lab_pids()
    assert len(pids) > len(lab.hosts)
    lab.stop()
    assert not [pid for pid in pids if _alive(pid)]
    assert not _lab_links()
    assert not _lab_mounts()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{labctl.CGROUP_NAME}")) + list(Path("/sys/fs/cgroup").glob(labctl.CGROUP_NAME))
    assert "10.213" not in subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert not labctl.STATE_FILE.exists() and not labctl.HOSTS_DIR.exists()
    assert not labctl.INVENTORY.exists()
    assert not labctl.status()["hosts"]
    labctl.down()  # a second down is harmless
    lab.start()  # later tests of the session get their lab back
