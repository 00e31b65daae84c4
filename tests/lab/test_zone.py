# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Zone mode on real hosts: the controller reaches only NATS (management net); a zone executor on the
executor host reaches the zone hosts over SSH. Nothing here opens SSH from the controller to a zone host,
except the checks that read results back (through the lab's jump host)."""

import hashlib
import json
import os
import re
import subprocess
import time

import pytest

import devenv

pytestmark = pytest.mark.lab(hosts=2, zone_hosts=20)

ZONE = "管理网"          # the seed incident's zone name, served for real this time
STRICT_BAD = "zone-bad-keys"
KNOWN_HOSTS = "/etc/natsops/known_hosts"


@pytest.fixture(scope="module")
def zone(lab, tmp_path_factory):
    """nats-server on the controller's management address, a zone executor for ZONE (strict host keys, the
    lab key as its default identity) and a second one whose known_hosts is wrong on purpose."""
    scratch = str(tmp_path_factory.mktemp("zone"))
    executor_host = lab.info["executor_hosts"][0]
    zone_hosts = [h for h in lab.hosts if h["networks"] == ["zone"]]
    assert len(zone_hosts) >= 20
    nats = devenv.NatsServer(listen=lab.info["controller_address"])
    started = []
    try:
        good = lab.known_hosts(zone_hosts)
        # zone-1's address with zone-2's key (a changed key); zone-2 absent (unknown under strict)
        bad = lab.known_hosts(zone_hosts[:1], keys_of={zone_hosts[0]["name"]: zone_hosts[1]["name"]})
        key = lab.info["executor_key_path"]
        started.append(devenv.LabExecutor(
            executor_host, nats.url, [ZONE], unit="natsops-zone-executor", scratch=scratch, files={KNOWN_HOSTS: good},
            extra_args=["--ssh-known-hosts", KNOWN_HOSTS, "--ssh-host-key-policy", "strict",
                        "--ssh-identity", "default=%s" % key, "--ssh-identity", "lab=%s" % key]))
        started.append(devenv.LabExecutor(
            executor_host, nats.url, [STRICT_BAD], unit="natsops-zone-bad", scratch=scratch,
            files={"/etc/natsops/bad_known_hosts": bad},
            extra_args=["--ssh-known-hosts", "/etc/natsops/bad_known_hosts", "--ssh-identity", "default=%s" % key]))
        yield {"nats": nats, "hosts": zone_hosts, "executor": started[0], "scratch": scratch}
    finally:
        for executor in started:
            executor.stop()
        nats.stop()


def _client(zone, instance=ZONE, target=None):
    from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # pylint: disable=import-outside-toplevel
    return ExecutorClient({"servers": [zone["nats"].url]}, instance, target=target).connect()


def _target(host, **extra):
    target = {"host": host["addresses"]["zone"], "port": 22, "user": "root"}
    target.update(extra)
    return target


def _inventory(zone, path, count=3, **hostvars):
    hosts = {}
    for host in zone["hosts"][:count]:
        hosts[host["name"]] = dict({
            "ansible_connection": "natsops.fleet.nats", "ansible_nats_mode": "ssh", "ansible_nats_executor": ZONE,
            "ansible_nats_servers": zone["nats"].url, "ansible_host": host["addresses"]["zone"], "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3"}, **hostvars)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"all": {"hosts": hosts}}, handle)
    return path


def test_controller_cannot_reach_zone_hosts_directly(zone):
    # the premise of zone mode: only the executor host reaches them
    for host in zone["hosts"]:
        probe = subprocess.run(["timeout", "3", "bash", "-c", "echo > /dev/tcp/%s/22" % host["addresses"]["zone"]],
                               capture_output=True, check=False)
        assert probe.returncode != 0


def test_playbook_of_builtin_modules_through_the_zone_executor(zone, lab, tmp_path):
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several NATS chunks, binary
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    fetched = tmp_path / "fetched"
    playbook = tmp_path / "zone.yml"
    playbook.write_text("""
- name: Builtin modules on zone hosts, through the zone executor
  hosts: all
  gather_facts: true
  tasks:
    - name: Facts came through NATS and SSH
      ansible.builtin.assert:
        that: ansible_facts.hostname == inventory_hostname
    - name: Shell with a pipe
      ansible.builtin.shell: printf 'a\\nb\\nc\\n' | wc -l
      register: lines
      changed_when: false
    - name: Check the pipe
      ansible.builtin.assert:
        that: lines.stdout | trim == '3'
    - name: Copy a binary file
      ansible.builtin.copy:
        src: "{src}"
        dest: /root/payload.bin
        mode: "0640"
    - name: Line in a file
      ansible.builtin.lineinfile:
        path: /root/zone.conf
        line: "zone={zone}"
        create: true
        mode: "0644"
    - name: Stat it
      ansible.builtin.stat:
        path: /root/payload.bin
        checksum_algorithm: sha256
      register: st
    - name: Fetch it back
      ansible.builtin.fetch:
        src: /root/payload.bin
        dest: "{fetched}/"
    - name: Become another user (alice, passwordless sudo)
      ansible.builtin.command: id -un
      become: true
      become_user: alice
      register: who
      changed_when: false
    - name: Check become
      ansible.builtin.assert:
        that: who.stdout == 'alice'
    - name: A failing command reports its rc
      ansible.builtin.command: sh -c 'exit 7'
      register: failing
      failed_when: failing.rc != 7
      changed_when: false
""".format(src=src, fetched=fetched, zone=ZONE), encoding="utf-8")
    inventory = _inventory(zone, str(tmp_path / "inventory.json"))
    result = subprocess.run([devenv.tool("ansible-playbook"), "-i", inventory, str(playbook)], env=devenv.ansible_env(),
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    digest = hashlib.sha256(payload).hexdigest()
    for host in zone["hosts"][:3]:
        assert re.search(r"%s\s+: ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=0" % host["name"], result.stdout)
        on_host = lab.ssh(host["name"], "sha256sum /root/payload.bin; stat -c %a /root/payload.bin; cat /root/zone.conf")
        assert on_host.returncode == 0, on_host.stderr
        assert on_host.stdout.split()[0] == digest
        assert on_host.stdout.split()[2] == "640"
        assert "zone=%s" % ZONE in on_host.stdout
        local = fetched / host["name"] / "root" / "payload.bin"
        assert hashlib.sha256(local.read_bytes()).hexdigest() == digest
    # a second run changes nothing
    again = subprocess.run([devenv.tool("ansible-playbook"), "-i", inventory, str(playbook)], env=devenv.ansible_env(),
                           capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]


def test_password_auth_and_wrong_password_at_the_auth_stage(zone):
    host = zone["hosts"][0]
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorUnreachable  # pylint: disable=import-outside-toplevel
    client = _client(zone, target=_target(host, user="bob", password="bob-secret"))
    try:
        rc, out, _err = client.exec_command(command="id -un")
        assert (rc, out) == (0, b"bob\n")
    finally:
        client.close()
    client = _client(zone, target=_target(host, user="bob", password="not-the-password"))
    try:
        with pytest.raises(ExecutorUnreachable) as info:
            client.exec_command(command="id -un")
    finally:
        client.close()
    assert info.value.code == "target_auth_failed"
    assert info.value.details.get("stage") == "auth"
    assert "not-the-password" not in info.value.message
    assert "not-the-password" not in zone["executor"].log()


def test_wrong_password_is_unreachable_in_ansible(zone, tmp_path):
    inventory = _inventory(zone, str(tmp_path / "inventory.json"), ansible_user="bob", ansible_password="wrong-one")
    result = subprocess.run([devenv.tool("ansible"), "-i", inventory, zone["hosts"][0]["name"], "-m", "ansible.builtin.ping"],
                            env=devenv.ansible_env(), capture_output=True, text=True, timeout=120, check=False)
    assert "UNREACHABLE" in result.stdout, result.stdout + result.stderr
    assert "refused authentication" in result.stdout and "wrong-one" not in result.stdout + result.stderr


def test_changed_and_unknown_host_keys_are_refused(zone):
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorUnreachable  # pylint: disable=import-outside-toplevel
    for host, words in ((zone["hosts"][0], "CHANGED"), (zone["hosts"][1], "unknown")):
        client = _client(zone, STRICT_BAD, target=_target(host))
        try:
            with pytest.raises(ExecutorUnreachable) as info:
                client.exec_command(command="touch /root/must-not-exist")
        finally:
            client.close()
        assert info.value.code == "host_key_rejected" and info.value.details.get("stage") == "host_key"
        assert words in info.value.message
    # nothing ran on either host
    for host in zone["hosts"][:2]:
        check = _client(zone, target=_target(host))
        try:
            assert check.exec_command(command="test -e /root/must-not-exist")[0] == 1
        finally:
            check.close()


def test_pooled_connection_is_reused(zone, lab):
    host = zone["hosts"][2]

    def accepted():
        out = lab.ssh(host["name"], "journalctl -u ssh --no-pager -o cat | grep -c 'Accepted publickey for root from %s'"
                      % lab.host(lab.info["executor_hosts"][0])["addresses"]["zone"])
        return int(out.stdout.strip() or 0)

    client = _client(zone, target=_target(host, identity="lab"))
    try:
        client.exec_command(command="true")  # the pool now holds a connection
        time.sleep(1.0)  # let sshd's log line of that connection reach the journal
        before = accepted()
        started = time.monotonic()
        for number in range(15):
            rc, out, _err = client.exec_command(command="echo %d" % number)
            assert (rc, out) == (0, b"%d\n" % number)
        elapsed = time.monotonic() - started
    finally:
        client.close()
    time.sleep(1.0)
    # each accepted() check is itself one SSH login from the executor host (the lab's ProxyJump): +1
    assert accepted() == before + 1, "the executor opened new SSH connections instead of reusing its pooled one"
    assert elapsed < 30


def test_timeout_kills_the_remote_process_group(zone, lab):
    host = zone["hosts"][0]
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError  # pylint: disable=import-outside-toplevel
    client = _client(zone, target=_target(host))
    try:
        with pytest.raises(ExecutorTaskError) as info:
            client.exec_command(command="sleep 300 & sleep 301; wait", timeout=2)
    finally:
        client.close()
    assert info.value.code == "timeout"
    time.sleep(1.5)
    left = lab.ssh(host["name"], "pgrep -f 'sleep 30[01]' || true")
    assert left.stdout.strip() == "", "remote processes survived the timeout: %s" % left.stdout


def test_executor_command_module_in_ssh_mode(zone, lab, tmp_path):
    host = zone["hosts"][1]
    playbook = tmp_path / "cmd.yml"
    playbook.write_text(json.dumps([{
        "name": "executor_command through the zone", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": devenv.tool("python")},
        "tasks": [{"name": "once", "natsops.fleet.executor_command": {
            "servers": zone["nats"].url, "executor": ZONE, "cmd": "hostname > /root/by-module",
            "creates": "/root/by-module", "target": {"host": host["addresses"]["zone"], "user": "root", "identity": "lab"}}}],
    }], ensure_ascii=False))
    runs = [subprocess.run([devenv.tool("ansible-playbook"), "-i", "localhost,", str(playbook)], env=devenv.ansible_env(),
                           capture_output=True, text=True, timeout=300, check=False) for _run in range(2)]
    assert runs[0].returncode == 0 and "changed=1" in runs[0].stdout, runs[0].stdout + runs[0].stderr
    assert runs[1].returncode == 0 and "changed=0" in runs[1].stdout, runs[1].stdout
    assert lab.ssh(host["name"], "cat /root/by-module").stdout.strip() == host["name"]


def test_twenty_hosts_in_parallel_through_one_executor(zone, lab, tmp_path):
    hosts = zone["hosts"][:20]
    playbook = tmp_path / "parallel.yml"
    playbook.write_text("""
- name: Twenty zone hosts at once through one zone executor
  hosts: all
  gather_facts: false
  tasks:
    - name: Who am I
      ansible.builtin.command: hostname
      register: me
      changed_when: false
    - name: Leave a mark
      ansible.builtin.copy:
        content: "{{ me.stdout }} via {{ ansible_nats_executor }}\n"
        dest: /root/parallel-mark
        mode: "0600"
""", encoding="utf-8")
    inventory = _inventory(zone, str(tmp_path / "inventory.json"), count=20)
    started = time.monotonic()
    result = subprocess.run([devenv.tool("ansible-playbook"), "-i", inventory, "--forks", "20", str(playbook)],
                            env=devenv.ansible_env(), capture_output=True, text=True, timeout=900, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    # twenty warm runners started at once (one per host) serve the second run: command, stat and copy or file
    before = _zone_load(zone)
    again = subprocess.run([devenv.tool("ansible-playbook"), "-i", inventory, "--forks", "20", str(playbook)],
                           env=devenv.ansible_env(), capture_output=True, text=True, timeout=900, check=False)
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    after = _zone_load(zone)
    assert after["warm_hits"] - before["warm_hits"] >= 20 * 3, (before, after, zone["executor"].log()[-3000:])
    assert len(re.findall(r"lab-zone-\d+\s+: ok=2\s+changed=1\s+unreachable=0\s+failed=0", result.stdout)) == 20
    marks = lab.ssh(lab.info["executor_hosts"][0], " ; ".join(
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
        "root@%s cat /root/parallel-mark" % h["addresses"]["zone"] for h in hosts), timeout=300)
    expected = " ".join("%s via %s" % (h["name"], ZONE) for h in hosts)
    assert " ".join(marks.stdout.split()) == expected, marks.stdout + marks.stderr
    assert elapsed < 600


def test_broken_pooled_connection_is_replaced(zone, lab):
    host = zone["hosts"][3]
    client = _client(zone, target=_target(host))
    try:
        assert client.exec_command(command="echo one")[1] == b"one\n"  # pooled now
        time.sleep(1.5)  # older than the check's own ssh session below, which --older spares
        # cut the executor's pooled connection on the target side: its sshd session process dies
        lab.ssh(host["name"], "pkill -KILL -f '^sshd: root@notty' --older 1 || true")
        time.sleep(0.5)
        rc, out, _err = client.exec_command(command="echo two")
        assert (rc, out) == (0, b"two\n")
    finally:
        client.close()


def test_executor_transfer_uploads_once_and_places_on_zone_hosts(zone, lab, tmp_path):
    hosts = zone["hosts"][5:10]
    src = tmp_path / "agent.tar.gz"
    src.write_bytes(os.urandom(1536 * 1024 + 3))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    playbook = tmp_path / "transfer.yml"
    playbook.write_text(json.dumps([{
        "name": "executor_transfer through the zone", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": devenv.tool("python")},
        "module_defaults": {"group/natsops.fleet.nats": {"servers": zone["nats"].url}},
        "tasks": [{"name": "place", "loop": [h["addresses"]["zone"] for h in hosts], "register": "placed",
                   "natsops.fleet.executor_transfer": {
                       "executor": ZONE, "src": str(src), "dest": "/root/agent.tar.gz", "mode": "0600",
                       "target": {"host": "{{ item }}", "user": "root", "identity": "lab"}}},
                  {"name": "uploaded once", "ansible.builtin.assert": {"that": [
                      "placed.results | selectattr('uploaded') | list | length == (1 if placed is changed else 0)"]}}],
    }], ensure_ascii=False))
    runs = [subprocess.run([devenv.tool("ansible-playbook"), "-i", "localhost,", str(playbook)] + extra,
                           env=devenv.ansible_env(), capture_output=True, text=True, timeout=300, check=False)
            for extra in ([], [], ["--check"])]
    assert runs[0].returncode == 0 and "changed=1" in runs[0].stdout, runs[0].stdout[-4000:] + runs[0].stderr
    assert runs[1].returncode == 0 and "changed=0" in runs[1].stdout, runs[1].stdout[-4000:]
    assert runs[2].returncode == 0 and "changed=0" in runs[2].stdout, runs[2].stdout[-4000:]
    for host in hosts:
        out = lab.ssh(host["name"], "sha256sum /root/agent.tar.gz; stat -c %a /root/agent.tar.gz; "
                                    "ls -a /root | grep -c natsops || true").stdout.split()
        assert out[0] == digest and out[2] == "600" and out[3] == "0", out


WARM_PLAY = """
- name: Module runs on zone hosts from warm runners
  hosts: all
  gather_facts: false
  tasks:
    - name: Command
      ansible.builtin.command: echo "warm {{ item }} on {{ inventory_hostname }}"
      loop: [1, 2, 3, 4, 5, 6]
      register: echoed
    - name: Every run answered
      ansible.builtin.assert:
        that: echoed.results | map(attribute='stdout') | list == range(1, 7) | map('regex_replace', '^(.*)$', 'warm \\\\1 on ' ~ inventory_hostname) | list
    - name: A file
      ansible.builtin.copy:
        content: "written warm on {{ inventory_hostname }}\\n"
        dest: /root/warm-zone.txt
        mode: "0640"
    - name: Environment and facts, warm
      ansible.builtin.setup:
        gather_subset: [min]
      register: warm_facts
    - name: The same cold
      ansible.builtin.setup:
        gather_subset: [min]
      register: cold_facts
      vars:
        ansible_nats_warm: false
    - name: Warm and cold see the same host and environment
      ansible.builtin.assert:
        that:
          - warm_facts.ansible_facts[item] == cold_facts.ansible_facts[item]
      loop: [ansible_user_id, ansible_hostname, ansible_python, ansible_selinux, ansible_pkg_mgr, ansible_service_mgr]
    - name: The same environment variables (names and values), but for the shell's own bookkeeping
      ansible.builtin.assert:
        that: (warm_facts.ansible_facts.ansible_env | dict2items | rejectattr('key', 'in', ['_', 'SHLVL']) | list) ==
              (cold_facts.ansible_facts.ansible_env | dict2items | rejectattr('key', 'in', ['_', 'SHLVL']) | list)
"""


def _zone_load(zone):
    client = _client(zone)
    try:
        return [r for r in client.discover(stats=True) if ZONE in r["instances"]][0]["load"]
    finally:
        client.close()


def test_module_runs_through_the_zone_executor_are_warm(zone, lab, tmp_path):
    playbook = tmp_path / "warm.yml"
    playbook.write_text(WARM_PLAY)
    inventory = _inventory(zone, str(tmp_path / "inventory.json"), count=2)
    loads = [_zone_load(zone)]
    for _round in range(2):  # the first round starts a runner per host (its first runs go cold); the second is warm
        result = subprocess.run([devenv.tool("ansible-playbook"), "-i", inventory, str(playbook)], capture_output=True,
                                text=True, env=devenv.ansible_env(), timeout=600, check=False)
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
        loads.append(_zone_load(zone))
    first, second = loads[1], loads[2]
    # second round, per host: 6 command, stat + copy, setup warm; the opted-out setup cold
    assert second["warm_hits"] - first["warm_hits"] == 2 * 9, loads
    cold = {reason: count - first["warm_cold_reasons"].get(reason, 0) for reason, count in second["warm_cold_reasons"].items()}
    # cold besides: the commands that are no module run (the copy's temporary directory, ...)
    assert {reason for reason, count in cold.items() if count} <= {"caller_opt_out", "not_a_pipelined_module"}, loads
    assert cold["caller_opt_out"] == 2, loads
    assert second["warm_runners"] >= 2
    for host in zone["hosts"][:2]:
        assert lab.ssh(host["name"], "cat /root/warm-zone.txt").stdout == "written warm on %s\n" % host["name"]
        # one runner on the target served every warm run: no interpreter per task ([n]: not this command's own shell)
        runners = lab.ssh(host["name"], "pgrep -c -f '[n]atsops-warm-parent' || true").stdout.strip()
        assert runners == "1", runners
