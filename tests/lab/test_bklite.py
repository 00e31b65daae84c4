# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""BK-Lite's SSH subjects (ssh.execute, download.remote, upload.remote) served by natsops-executor
--bklite-compat on the executor host, driven from the controller by a BK-Lite server client written from
the brief (tests/e2e/bklite_client.py), against real sshd on zone hosts the controller cannot reach."""

import asyncio
import hashlib
import json
import os
import subprocess

import nats
import pytest

import devenv
from bklite_client import BkliteCallFailed, BkliteServerClient

pytestmark = pytest.mark.lab(hosts=2, zone_hosts=20)

ZONE = "业务网"
KNOWN_HOSTS = "/etc/natsops/bklite_known_hosts"
SECRET = "bob-secret"


@pytest.fixture(scope="module")
def bk(lab, tmp_path_factory):
    """nats-server on the management address; on the executor host, a compat executor for ZONE whose
    known_hosts lists every zone host but the last (unknown under the strict policy)."""
    executor_host = lab.info["executor_hosts"][0]
    hosts = [h for h in lab.hosts if h["networks"] == ["zone"]]
    server = devenv.NatsServer(listen=lab.info["controller_address"])
    executor = None
    try:
        executor = devenv.LabExecutor(
            executor_host, server.url, [ZONE], unit="natsops-bklite-executor",
            scratch=str(tmp_path_factory.mktemp("bklite")), files={KNOWN_HOSTS: lab.known_hosts(hosts[:-1])},
            extra_args=["--bklite-compat", "--ssh-known-hosts", KNOWN_HOSTS, "--ssh-host-key-policy", "strict"])
        key = lab.ssh(executor_host, "cat %s" % lab.info["executor_key_path"]).stdout
        yield {"nats": server, "executor": executor, "hosts": hosts, "key": key, "executor_host": executor_host,
               "client": BkliteServerClient(server.url, ZONE)}
    finally:
        if executor is not None:
            executor.stop()
        server.stop()


def _address(host):
    return host["addresses"]["zone"]


def test_ssh_execute_with_the_key_sent_in_the_request(bk):
    host = bk["hosts"][0]
    assert bk["client"].execute_ssh("hostname", _address(host), "root", private_key=bk["key"]) == host["name"] + "\n"
    with pytest.raises(BkliteCallFailed) as failed:
        bk["client"].execute_ssh("echo on-stdout; echo on-stderr >&2; exit 3", _address(host), "root",
                                 private_key=bk["key"])
    reply = failed.value.reply
    assert (reply["code"], reply["stage"], reply["category"]) == ("execution_failure", "command_run", "remote_exit")
    assert reply["error"] == "Command execution failed: Process exited with status 3"
    assert reply["result"] == "on-stdout\non-stderr\n" and reply["exit_code"] == 3


def test_ssh_execute_with_a_password_and_a_wrong_one(bk):
    host = bk["hosts"][1]
    assert bk["client"].execute_ssh("id -un", _address(host), "bob", password=SECRET) == "bob\n"
    reply = bk["client"].execute_ssh("id -un", _address(host), "bob", password="not-" + SECRET, raw=True)
    assert (reply["code"], reply["stage"], reply["category"]) == ("dependency_failure", "ssh_dial", "auth")
    assert reply["error"].startswith("SSH authentication failed:")
    assert "not-" + SECRET not in json.dumps(reply) and SECRET not in bk["executor"].log()


def test_ssh_execute_without_credentials_uses_the_executors_identity(bk):
    host = bk["hosts"][2]
    assert bk["client"].execute_ssh("hostname", _address(host), "root") == host["name"] + "\n"


def test_unknown_host_key_is_refused(bk, lab):
    host = bk["hosts"][-1]  # not in the executor's known_hosts
    reply = bk["client"].execute_ssh("touch /root/bklite-ran", _address(host), "root", private_key=bk["key"], raw=True)
    assert (reply["code"], reply["stage"], reply["category"]) == ("dependency_failure", "ssh_dial", "dependency")
    assert "host key" in reply["error"]
    assert lab.ssh(host["name"], "test -e /root/bklite-ran && echo ran || echo clean").stdout.strip() == "clean"


TOFU_ZONE = "新区"
TOFU_KNOWN_HOSTS = "/etc/natsops/bklite_tofu_known_hosts"


def test_bklite_compat_learns_a_fresh_hosts_key_and_refuses_a_changed_one(bk, lab, tmp_path):
    """--bklite-compat without --ssh-host-key-policy: accept-new, as BK-Lite operators add hosts from its UI and never
    touch known_hosts. A fresh host works at once and its key lands in known_hosts; a host whose recorded key differs
    from the one it offers is refused and nothing runs; the executor says so loudly."""
    fresh, changed = bk["hosts"][-1], bk["hosts"][-2]
    executor = devenv.LabExecutor(
        bk["executor_host"], bk["nats"].url, [TOFU_ZONE], unit="natsops-bklite-tofu", scratch=str(tmp_path),
        files={TOFU_KNOWN_HOSTS: lab.known_hosts([changed], keys_of={changed["name"]: bk["hosts"][0]["name"]})},
        extra_args=["--bklite-compat", "--ssh-known-hosts", TOFU_KNOWN_HOSTS])
    try:
        client = BkliteServerClient(bk["nats"].url, TOFU_ZONE)
        assert client.execute_ssh("hostname", _address(fresh), "root", private_key=bk["key"]) == fresh["name"] + "\n"
        recorded = lab.ssh(bk["executor_host"], "cat %s" % TOFU_KNOWN_HOSTS).stdout
        assert _address(fresh) + " " + fresh["host_key"].split()[0] in recorded
        reply = client.execute_ssh("touch /root/bklite-tofu-ran", _address(changed), "root", private_key=bk["key"],
                                   raw=True)
        assert (reply["code"], reply["stage"]) == ("dependency_failure", "ssh_dial")
        assert "CHANGED" in reply["error"]
        ran = lab.ssh(changed["name"], "test -e /root/bklite-tofu-ran && echo ran || echo clean").stdout.strip()
        assert ran == "clean"
        log = executor.log()
        assert "SSH HOST KEYS ARE LEARNT ON FIRST CONTACT" in log
        assert "learned the host key of %s on first contact" % _address(fresh) in log
    finally:
        executor.stop()


def test_ssh_execute_streams_lines(bk):
    host = bk["hosts"][0]
    events = []

    async def run():
        nc = await nats.connect(bk["nats"].url)
        sub = await nc.subscribe("executor.stream.lab-1")
        await nc.flush()
        result = await asyncio.get_running_loop().run_in_executor(None, lambda: bk["client"].execute_ssh(
            "for i in 1 2 3; do echo line-$i; done", _address(host), "root", stream_logs=True,
            stream_log_topic="executor.stream.lab-1", execution_id="lab-1"))
        while len(events) < 3:
            events.append(json.loads((await sub.next_msg(timeout=5)).data))
        await nc.close()
        return result

    assert asyncio.run(run()) == "line-1\nline-2\nline-3\n"
    assert [e["line"] for e in events] == ["line-1", "line-2", "line-3"]


def _put_object(url, key, data):
    async def put():
        nc = await nats.connect(url)
        try:
            store = await nc.jetstream().create_object_store("bklite")
            await store.put(key, data)
        finally:
            await nc.close()
    asyncio.run(put())


def test_download_remote_places_an_object_store_file_on_the_host(bk, lab):
    host = bk["hosts"][3]
    data = os.urandom(2 * 1024 * 1024 + 5)
    _put_object(bk["nats"].url, "linux/x86_64/probe/1.0/probe.tar.gz", data)
    lab.ssh(host["name"], "mkdir -p /opt/probe")
    # an existing directory receives file_name; staging on the executor host is removed afterwards
    assert bk["client"].download_to_remote("bklite", "linux/x86_64/probe/1.0/probe.tar.gz", "probe.tar.gz", "/opt/probe",
                                           _address(host), "root", private_key=bk["key"], fast_fail=True) == ""
    on_host = lab.ssh(host["name"], "sha256sum /opt/probe/probe.tar.gz; ls -a /opt/probe").stdout.split()
    assert on_host[0] == hashlib.sha256(data).hexdigest()
    assert sorted(on_host[2:]) == [".", "..", "probe.tar.gz"]  # no temp file left
    assert lab.ssh(bk["executor_host"], "ls -d /tmp/nats-executor-* 2>/dev/null | wc -l").stdout.strip() == "0"
    # a missing remote directory fails and leaves nothing
    reply = bk["client"].download_to_remote("bklite", "linux/x86_64/probe/1.0/probe.tar.gz", "probe.tar.gz",
                                            "/no/such/dir/probe.tar.gz", _address(host), "root", private_key=bk["key"],
                                            raw=True)
    assert reply["success"] is False and reply["code"] == "execution_failure"


def test_download_remote_fast_fail_on_a_closed_port(bk):
    reply = bk["client"].download_to_remote("bklite", "k", "f", "/tmp", _address(bk["hosts"][0]), "root", port=2,
                                            private_key=bk["key"], fast_fail=True, timeout=5, raw=True)
    assert reply["code"] == "dependency_failure" and reply["error"].startswith("远程主机端口不可达: ")


def test_upload_remote_copies_a_directory_from_the_executor_host(bk, lab):
    host = bk["hosts"][4]
    lab.ssh(bk["executor_host"], "rm -rf /srv/bundle && mkdir -p /srv/bundle/conf && echo one > /srv/bundle/a.txt && "
                                 "head -c 300000 /dev/urandom > /srv/bundle/conf/blob && chmod 0750 /srv/bundle/conf")
    expected = lab.ssh(bk["executor_host"], "cd /srv/bundle && find . -type f | sort | xargs sha256sum").stdout
    lab.ssh(host["name"], "rm -rf /srv/dest && mkdir -p /srv/dest")
    assert bk["client"].transfer_file_to_remote("/srv/bundle", "/srv/dest", _address(host), "root",
                                                private_key=bk["key"]) == ""
    got = lab.ssh(host["name"], "cd /srv/dest/bundle && find . -type f | sort | xargs sha256sum; "
                                "stat -c %a /srv/dest/bundle/conf").stdout
    assert got.startswith(expected) and got.strip().endswith("750")
    # a single file to a new path is written as that path
    assert bk["client"].transfer_file_to_remote("/srv/bundle/a.txt", "/srv/dest/renamed.txt", _address(host), "root",
                                                private_key=bk["key"]) == ""
    assert lab.ssh(host["name"], "cat /srv/dest/renamed.txt").stdout == "one\n"
    reply = bk["client"].transfer_file_to_remote("/srv/nothing-here", "/srv/dest", _address(host), "root",
                                                 private_key=bk["key"], raw=True)
    assert reply["code"] == "execution_failure" and "does not exist" in reply["error"]


def test_modules_drive_the_bklite_subjects_over_ssh(bk, lab, tmp_path):
    """executor_command and executor_transfer with protocol bklite, as they would drive BK-Lite's own executors."""
    hosts = bk["hosts"][5:7]
    src = tmp_path / "conf.tar"
    src.write_bytes(os.urandom(200 * 1024))
    playbook = tmp_path / "bk.yml"
    target = {"host": "{{ item }}", "user": "root", "private_key": bk["key"]}
    playbook.write_text(json.dumps([{
        "name": "BK-Lite protocol through the zone", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": devenv.tool("python")},
        "module_defaults": {"group/natsops.fleet.nats": {"servers": bk["nats"].url, "protocol": "bklite"}},
        "tasks": [
            {"name": "place", "loop": [_address(h) for h in hosts], "natsops.fleet.executor_transfer": {
                "executor": ZONE, "src": str(src), "dest": "/root/conf.tar", "mode": "0600", "target": target}},
            {"name": "run", "loop": [_address(h) for h in hosts], "register": "ran", "changed_when": False,
             "natsops.fleet.executor_command": {"executor": ZONE, "cmd": "sha256sum /root/conf.tar", "target": target}},
            {"name": "same content", "ansible.builtin.assert": {"that": [
                "ran.results | map(attribute='stdout') | map('split') | map('first') | unique | list == ['%s']"
                % hashlib.sha256(src.read_bytes()).hexdigest()]}}],
    }], ensure_ascii=False))
    runs = [subprocess.run([devenv.tool("ansible-playbook"), "-i", "localhost,", str(playbook)], env=devenv.ansible_env(),
                           capture_output=True, text=True, timeout=300, check=False) for _round in range(2)]
    assert runs[0].returncode == 0 and "changed=1" in runs[0].stdout, runs[0].stdout[-4000:] + runs[0].stderr[-2000:]
    assert runs[1].returncode == 0 and "changed=0" in runs[1].stdout, runs[1].stdout[-4000:]
    for host in hosts:
        assert lab.ssh(host["name"], "stat -c %a /root/conf.tar").stdout.strip() == "600"
    assert bk["key"].strip().splitlines()[1] not in runs[0].stdout + bk["executor"].log()
