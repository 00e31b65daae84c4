# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/site.yml on real systemd hosts, secured: a NATS server with TLS and users whose permissions follow
the fleet's least-privilege model, executors in two zones (管理网 over SSH, default on its own host) that
connect with their own identities; idempotent, check mode clean, user changes applied with a reload, the
permission model enforced, an open server refused; trust as the roles set it up (executors that run only requests
signed by the controller's key, their reply keys pinned on the controller, the audit stream holding every request);
then the same server in operator (JWT) mode."""

import asyncio
import json
import os
import re
import ssl
import subprocess

import nats
import pytest

import devenv
import fleetkit
from natsauth import permission_violations

pytestmark = pytest.mark.lab(hosts=4, zone_hosts=2)

PASSWORDS = {"controller": "Ctl-lab-1", "exec-mgmt": "Mgmt-lab-2", "exec-default": "Dflt-lab-3", "probe-1": "Probe-lab-4",
             "ops": "Ops-lab-5", "leaf-mgmt": "Leaf-lab-6"}


@pytest.fixture(scope="module")
def site(lab, wheelhouse, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("site")
    candidates = [h for h in lab.hosts if "mgmt" in h["addresses"] and h["role"] != "executor"]
    nats_host, agent = candidates[0], candidates[-1]
    zone_gw = lab.host(lab.info["executor_hosts"][0])
    zone_hosts = [h for h in lab.hosts if h["networks"] == ["zone"]][:2]
    address = nats_host["addresses"]["mgmt"]
    ca, cert, key = fleetkit.tls_files(str(scratch), [address], 700)
    url = "tls://%s:4222" % address
    # a JetStream store left by another test (or by the operator-mode test below) holds accounts this one does
    # not know, and /healthz would say so
    wipe = "systemctl stop nats-server 2>/dev/null; rm -rf /var/lib/nats-server/jetstream"
    lab.ssh(nats_host["name"], wipe)
    # the controller's signing key (the executor role makes it) and pinned executor keys, in files of this test's own
    controller_key = str(scratch / "controller" / "signing.nk")
    known = str(scratch / "known_executors")

    def users(extra=()):
        return [{"name": "controller", "role": "controller", "password": PASSWORDS["controller"]},
                {"name": "exec-mgmt", "role": "executor", "instances": ["管理网"], "password": PASSWORDS["exec-mgmt"]},
                {"name": "exec-default", "role": "executor", "instances": ["default"], "password": PASSWORDS["exec-default"]},
                {"name": "probe-1", "role": "probe", "instances": [agent["name"]], "password": PASSWORDS["probe-1"]}] + list(extra)

    def write(name="site.json", nats_vars=None, extra_users=(), leaf=False):
        group_vars = {"nats_server_install_method": "local", "nats_server_local_file": devenv.tool("nats-server"),
                      "nats_server_tls_cert_file": cert, "nats_server_tls_key_file": key, "nats_server_tls_ca_file": ca,
                      "nats_server_users": users(extra_users)}
        group_vars.update(nats_vars or {})
        servers = {nats_host["name"]: {"ansible_host": address}}
        gateway = {}
        if leaf:
            # the zone's own NATS server on its gateway, a leaf node of the central one; the executor uses it
            servers[nats_host["name"]]["nats_server_leafnodes_port"] = 7422
            servers[zone_gw["name"]] = {
                "ansible_host": zone_gw["addresses"]["mgmt"], "nats_server_jetstream": False,
                "nats_server_tls_cert_file": "", "nats_server_tls_key_file": "", "nats_server_listen_address": "127.0.0.1",
                "nats_server_users": [u for u in users() if u["name"] == "exec-mgmt"],
                "nats_server_leafnode_remotes": [{"urls": ["tls://%s:7422" % address], "user": "leaf-mgmt",
                                                  "password": PASSWORDS["leaf-mgmt"], "tls": True}]}
            gateway = {"executor_servers": ["nats://127.0.0.1:4222"], "executor_nats_ca_file": ""}
        return fleetkit.write_inventory(lab, scratch / name, {
            "nats_servers": {"vars": group_vars, "hosts": servers},
            "executors": {
                "vars": {"executor_servers": [url], "executor_wheelhouse": wheelhouse, "executor_nats_ca_file": ca,
                         "executor_controller_signing_key": controller_key, "executor_known_executors_file": known},
                "hosts": {
                    zone_gw["name"]: {"ansible_host": zone_gw["addresses"]["mgmt"], "executor_instances": ["管理网"],
                                      "executor_nats_user": "exec-mgmt", "executor_nats_password": PASSWORDS["exec-mgmt"],
                                      "executor_ssh_identities": {"default": lab.info["ssh_private_key_file"]},
                                      "executor_ssh_known_hosts": lab.known_hosts(zone_hosts).splitlines(), **gateway},
                    agent["name"]: {"ansible_host": agent["addresses"]["mgmt"], "executor_instances": ["default"],
                                    "executor_nats_user": "exec-default",
                                    "executor_nats_password": PASSWORDS["exec-default"]}}}})

    try:
        yield {"nats_host": nats_host, "agent": agent, "zone_gw": zone_gw, "zone_hosts": zone_hosts, "url": url, "ca": ca,
               "write": write, "scratch": scratch, "controller_key": controller_key, "known": known}
    finally:
        fleetkit.remove_units(lab, (zone_gw, agent), "natsops-executor")
        fleetkit.remove_units(lab, (nats_host, zone_gw), "nats-server")
        lab.ssh(nats_host["name"], wipe)


def _client(site, instance, target=None, signing_key="controller", known=None):
    """A client with the controller's NATS identity, signing with the controller's key (None: unsigned) and checking
    replies against the pins in ``known`` (default: the ones the role wrote)."""
    from ansible_collections.natsops.fleet.plugins.module_utils._client import CallerTrust, ExecutorClient  # pylint: disable=import-outside-toplevel
    trust = CallerTrust(site["controller_key"] if signing_key == "controller" else signing_key, known or site["known"])
    return ExecutorClient({"servers": [site["url"]], "ca": site["ca"], "user": "controller",
                           "password": PASSWORDS["controller"]}, instance, target=target, trust=trust).connect()


async def _violations(site, name, actions):
    return await permission_violations(actions, servers=site["url"], tls=ssl.create_default_context(cafile=site["ca"]),
                                       user=name, password=PASSWORDS[name], inbox_prefix="_INBOX." + name)


def _nats_pid(lab, site):
    return lab.ssh(site["nats_host"]["name"], "systemctl show -p MainPID --value nats-server").stdout.strip()


def test_site_with_tls_users_and_executors_in_two_zones(lab, site):
    inventory = site["write"]()
    fleetkit.recap(fleetkit.play("site.yml", inventory), changed=1)
    fleetkit.recap(fleetkit.play("site.yml", inventory), changed=0)
    fleetkit.recap(fleetkit.play("site.yml", inventory, "--check"), changed=0)
    conf = lab.ssh(site["nats_host"]["name"], "cat /etc/nats-server/nats-server.conf").stdout
    assert "$2b$11$" in conf and not any(secret in conf for secret in PASSWORDS.values())
    # random salts: a fresh render hashes the same passwords differently, and the next run keeps the new hashes
    lab.ssh(site["nats_host"]["name"], "rm /etc/nats-server/.password-hashes.json")
    fleetkit.recap(fleetkit.play("site.yml", inventory), changed=1)
    fleetkit.recap(fleetkit.play("site.yml", inventory), changed=0)
    rehashed = lab.ssh(site["nats_host"]["name"], "cat /etc/nats-server/nats-server.conf").stdout
    assert set(re.findall(r"\$2b\$11\$[^\"]+", conf)).isdisjoint(re.findall(r"\$2b\$11\$[^\"]+", rehashed))
    executor_conf = lab.ssh(site["zone_gw"]["name"], "cat /etc/natsops/executor.yml").stdout
    assert 'inbox_prefix: "_INBOX.exec-mgmt"' in executor_conf

    zone_host = site["zone_hosts"][0]
    assert fleetkit.hostname_through(_client(site, "管理网", target={"host": zone_host["addresses"]["zone"], "user": "root"})) \
        == zone_host["name"]
    assert fleetkit.hostname_through(_client(site, "default")) == site["agent"]["name"]


def test_trust_set_up_by_the_roles(lab, site, tmp_path):
    """The executors run only requests signed by the controller's key, which the executor role made; the controller
    pinned each executor's own reply key per instance id; a playbook signs through the zone executor; unsigned
    requests and a reply signed by another key are refused; the audit stream the server role made holds it all."""
    from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorTaskError  # pylint: disable=import-outside-toplevel
    from ansible_collections.natsops.fleet.plugins.module_utils.wire import signing  # pylint: disable=import-outside-toplevel
    controller = fleetkit.public_key(site["controller_key"])
    assert [oct(os.stat(p).st_mode & 0o777) for p in (site["controller_key"], os.path.dirname(site["controller_key"]),
                                                      site["known"])] == ["0o600", "0o700", "0o600"]
    executors = {"管理网": site["zone_gw"], "default": site["agent"]}
    keys = {}
    for instance, host in executors.items():
        conf = lab.ssh(host["name"], "cat /etc/natsops/executor.yml").stdout
        assert 'trusted_signers: ["%s"]' % controller in conf and "require_signatures: true" in conf, conf
        keys[instance] = fleetkit.host_public_key(lab, host["name"], "/etc/natsops/signing.nk", "/opt/natsops-executor/bin/python")
    assert keys["管理网"] != keys["default"] != controller
    assert sorted(fleetkit.pins(site["known"])) == sorted(
        (instance, keys[instance], "natsops.fleet.executor %s natsops-executor" % host["name"]) for instance, host in executors.items())

    # a playbook through the zone executor: the connection plugin signs with ansible_nats_signing_key
    zone_host = site["zone_hosts"][0]
    inventory = fleetkit.write_inventory(lab, tmp_path / "zone.json", {"zone": {"hosts": {zone_host["name"]: {
        "ansible_host": zone_host["addresses"]["zone"], "ansible_connection": "natsops.fleet.nats", "ansible_nats_mode": "ssh",
        "ansible_nats_executor": "管理网", "ansible_nats_servers": site["url"], "ansible_nats_ca": site["ca"],
        "ansible_nats_user": "controller", "ansible_nats_password": PASSWORDS["controller"],
        "ansible_nats_signing_key": site["controller_key"], "ansible_nats_known_executors": site["known"]}}}})
    playbook = tmp_path / "hostname.yml"
    playbook.write_text("- name: Through the zone executor\n  hosts: zone\n  gather_facts: false\n  tasks:\n"
                        "    - name: Hostname\n      ansible.builtin.command: hostname\n      register: out\n"
                        "      changed_when: false\n    - name: It ran on the zone host\n      ansible.builtin.assert:\n"
                        "        that: out.stdout == inventory_hostname\n", encoding="utf-8")
    fleetkit.changed_counts(fleetkit.play(str(playbook), inventory))

    # unsigned requests, from the controller's own NATS identity, are refused before anything runs
    target = {"host": zone_host["addresses"]["zone"], "user": "root"}
    for instance in executors:
        with pytest.raises(ExecutorTaskError) as refused:
            fleetkit.hostname_through(_client(site, instance, target=target if instance == "管理网" else None, signing_key=None))
        assert refused.value.code == signing.E_UNSIGNED, refused.value

    # integrity: the agent's executor is stopped and an impostor with its NATS identity (which may serve "default" and
    # publish replies) answers for it, signed with a key of its own; the caller, who pinned the real key, refuses it
    impostor_key = signing.SigningKey.from_file(fleetkit.new_signing_key(str(tmp_path / "impostor.nk")))
    lab.ssh(site["agent"]["name"], "systemctl stop natsops-executor")
    try:
        forged = asyncio.run(_impostor_answers(site, "default", "exec-default", impostor_key))
    finally:
        lab.ssh(site["agent"]["name"], "systemctl start natsops-executor")
    assert forged.code == signing.E_INTEGRITY and forged.details["cause"] == signing.E_UNTRUSTED_SIGNER, forged
    assert "forged output" not in str(forged) and keys["default"] in str(forged)

    # the audit stream: made by the server role with the controller user, holding the runs and the refusals
    config, records = asyncio.run(_audit_trail(site))
    assert (config.subjects, config.num_replicas, config.max_age, config.deny_delete, config.deny_purge) == (
        ["natsops.audit.>"], 1, 90 * 86400, True, True), config
    for instance in executors:
        mine = [r for subject, r in records if subject == "natsops.audit.%s" % instance]
        assert any(r["verdict"] == "ok" and r["signer"] == controller for r in mine), mine
        assert any(r["verdict"] == "refused" and r["code"] == signing.E_UNSIGNED for r in mine), mine
    assert any(r.get("target") == "root@%s:22" % zone_host["addresses"]["zone"] for _s, r in records), records
    assert PASSWORDS["controller"] not in json.dumps(records)


PROBE_RESET = ("systemctl disable --now natsops-probe 2>/dev/null; rm -rf /etc/systemd/system/natsops-probe.service "
               "/opt/natsops-probe /opt/natsops-probe-wheelhouse /opt/natsops-probe-wheelhouse.tar /etc/natsops-probe; "
               "systemctl reset-failed natsops-probe 2>/dev/null; systemctl daemon-reload")


def test_a_probe_on_the_secured_server(lab, site, wheelhouse, tmp_path):
    """The probe role as the README shows it for a secured server: the controller's identity (ansible_nats_*) for the
    Object Store and registry tasks, the probe's own (probe_nats_*, a user with the probe role) on the host. A wrong
    password fails the host with the server's refusal as the probe logged it (not the broken pipe that follows it);
    the right one registers; the inventory plugin reads the registry over TLS without asyncio's SSL warning; removal
    prints no warning."""
    agent = site["agent"]
    known = str(tmp_path / "known_executors")

    def inventory(password, name):
        return fleetkit.write_inventory(lab, tmp_path / name, {"probes": {"hosts": {agent["name"]: {
            "ansible_host": agent["addresses"]["mgmt"], "ansible_nats_servers": site["url"], "ansible_nats_ca": site["ca"],
            "ansible_nats_user": "controller", "ansible_nats_password": PASSWORDS["controller"],
            "ansible_nats_signing_key": site["controller_key"], "ansible_nats_known_executors": known,
            "probe_servers": [site["url"]], "probe_nats_ca_file": site["ca"], "probe_nats_user": "probe-1",
            "probe_nats_password": password, "probe_wheelhouse": wheelhouse, "probe_register_timeout": 14,
            "probe_artifact_dir": str(tmp_path / "artifacts")}}}})

    lab.ssh(agent["name"], PROBE_RESET)
    try:
        refused = fleetkit.play("install_probes.yml", inventory("Wrong-password-9", "wrong.json"))
        assert refused.returncode != 0, refused.stdout[-3000:]
        message = next(line for line in refused.stdout.splitlines() if "not registered" in line)
        assert re.search(r"last error: cannot connect to NATS \(servers=%s auth=user probe-1 tls=on\): the server refused "
                         r"the credentials \(Authorization Violation\)" % re.escape(site["url"]), message), message
        for noise in ("Broken pipe", "eof_received", "Wrong-password-9"):
            assert noise not in refused.stdout + refused.stderr, (noise, message)

        good = inventory(PASSWORDS["probe-1"], "probe.json")
        fleetkit.recap(fleetkit.play("install_probes.yml", good), changed=1)
        assert lab.ssh(agent["name"], "systemctl is-active natsops-probe").stdout.strip() == "active"
        fleetkit.recap(fleetkit.play("install_probes.yml", good), changed=0)

        # the inventory plugin over TLS as the README says: options in its file, the password from the environment
        registry = tmp_path / "fleet.probes.yml"
        registry.write_text("plugin: natsops.fleet.probes\nservers: %s\nca: %s\nuser: controller\n" % (site["url"], site["ca"]),
                            encoding="utf-8")
        listed = subprocess.run([devenv.tool("ansible-inventory"), "-i", str(registry), "--list"], capture_output=True,
                                text=True, timeout=120, check=False,
                                env=devenv.ansible_env({"NATS_PASSWORD": PASSWORDS["controller"]}))
        assert listed.returncode == 0, listed.stderr[-3000:]
        # ansible-core 2.19 marks strings that are not templates ({"__ansible_unsafe": ...}); the values are what count
        data = json.loads(listed.stdout, object_hook=lambda d: d["__ansible_unsafe"] if list(d) == ["__ansible_unsafe"] else d)
        assert data["natsops_probes"]["hosts"] == [agent["name"]], listed.stdout[-2000:]
        assert "eof_received" not in listed.stderr and "[WARNING]" not in listed.stderr, listed.stderr[-2000:]

        removed = fleetkit.play("install_probes.yml", good, "-e", "probe_state=absent")
        fleetkit.recap(removed, changed=1)
        assert "[WARNING]" not in removed.stdout + removed.stderr, (removed.stdout + removed.stderr)[-3000:]
    finally:
        lab.ssh(agent["name"], PROBE_RESET)


async def _impostor_answers(site, instance, nats_user, impostor_key):
    """The error a caller (pinning the real executors' keys) gets when ``nats_user`` answers for ``instance``."""
    from ansible_collections.natsops.fleet.plugins.module_utils._client import (  # pylint: disable=import-outside-toplevel
        AsyncExecutorClient, CallerTrust, ExecutorTaskError,
    )
    from ansible_collections.natsops.fleet.plugins.module_utils.wire import contract, signing  # pylint: disable=import-outside-toplevel
    tls = ssl.create_default_context(cafile=site["ca"])
    impostor = await nats.connect(site["url"], tls=tls, user=nats_user, password=PASSWORDS[nats_user],
                                  inbox_prefix="_INBOX." + nats_user, connect_timeout=5, allow_reconnect=False)

    async def answer(msg):
        doc, _attachment = contract.unpack(msg.headers, msg.data)
        headers, body = contract.pack(contract.KIND_ACCEPTED, {"v": 1, "id": doc["id"], "executor": {
            "name": "impostor", "service_id": "x", "version": "0"}})
        headers.update(impostor_key.sign(signing.signed_bytes(signing.RESULT_TAG, "%s:%s" % (doc["id"], doc["nonce"]), body)))
        await impostor.publish(msg.reply, body, headers=headers)
        headers, body = contract.pack(contract.KIND_DATA, None, b"forged output", seq=1, stream="stdout")
        await impostor.publish(doc["reply_to"], body, headers=headers)

    await impostor.subscribe("natsops.exec.%s" % instance, queue="natsops-executors", cb=answer)
    await impostor.flush()
    nc = await nats.connect(site["url"], tls=tls, user="controller", password=PASSWORDS["controller"], connect_timeout=5)
    client = AsyncExecutorClient(nc, instance, trust=CallerTrust(site["controller_key"], site["known"]))
    try:
        with pytest.raises(ExecutorTaskError) as refused:
            await client.exec_command(command="hostname")
        return refused.value
    finally:
        await nc.close()
        await impostor.close()


async def _audit_trail(site):
    """The audit stream's configuration and its records as (subject, record), read as the controller."""
    await asyncio.sleep(1)  # executors publish their records in the background
    nc = await nats.connect(site["url"], tls=ssl.create_default_context(cafile=site["ca"]), user="controller",
                            password=PASSWORDS["controller"], connect_timeout=5)
    try:
        js = nc.jetstream()
        info = await js.stream_info("natsops_audit")
        records = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("natsops_audit", seq)
            records.append((msg.subject, json.loads(msg.data)))
        return info.config, records
    finally:
        await nc.close()


def test_the_permission_model_is_enforced(site):
    async def call_other_zone(nc):
        await nc.publish("natsops.exec.管理网", b"{}")
        await nc.subscribe("natsops.exec.管理网", queue="natsops-executors")
        await nc.subscribe("_INBOX.>")

    assert len(asyncio.run(_violations(site, "exec-default", call_other_zone))) == 3

    async def probe_calls_an_executor(nc):
        await nc.publish("natsops.exec.default", b"{}")
        await nc.publish("$KV.natsops_registry.%s" % site["agent"]["name"], b"{}")  # its own registry key: allowed

    found = asyncio.run(_violations(site, "probe-1", probe_calls_an_executor))
    assert len(found) == 1 and "natsops.exec.default" in found[0], found

    async def anonymous():
        await nats.connect(site["url"], tls=ssl.create_default_context(cafile=site["ca"]), allow_reconnect=False,
                           max_reconnect_attempts=0, connect_timeout=5)

    with pytest.raises(Exception) as refused:
        asyncio.run(anonymous())
    assert "authorization" in str(refused.value).lower()


def test_a_new_user_is_a_reload_and_an_open_server_is_refused(lab, site):
    pid = _nats_pid(lab, site)
    inventory = site["write"]("more.json", extra_users=[{"name": "ops", "role": "admin", "password": PASSWORDS["ops"]}])
    fleetkit.recap(fleetkit.play("nats_cluster.yml", inventory), changed=1)
    assert _nats_pid(lab, site) == pid

    async def ops_may_use_jetstream():
        nc = await nats.connect(site["url"], tls=ssl.create_default_context(cafile=site["ca"]), user="ops",
                                password=PASSWORDS["ops"], connect_timeout=5, allow_reconnect=False)
        try:
            return (await nc.jetstream().account_info()) is not None
        finally:
            await nc.close()

    assert asyncio.run(ops_may_use_jetstream())
    fleetkit.recap(fleetkit.play("nats_cluster.yml", inventory), changed=0)

    before = lab.ssh(site["nats_host"]["name"], "sha256sum /etc/nats-server/nats-server.conf").stdout
    open_server = site["write"]("open.json", nats_vars={"nats_server_users": []})
    result = fleetkit.play("nats_cluster.yml", open_server)
    assert result.returncode != 0 and "nats_server_allow_anonymous" in result.stdout, result.stdout[-3000:]
    assert lab.ssh(site["nats_host"]["name"], "sha256sum /etc/nats-server/nats-server.conf").stdout == before


def test_a_zone_behind_a_leaf_node(lab, site):
    leaf_user = [{"name": "leaf-mgmt", "role": "admin", "password": PASSWORDS["leaf-mgmt"]}]
    inventory = site["write"]("leaf.json", extra_users=leaf_user, leaf=True)
    fleetkit.recap(fleetkit.play("site.yml", inventory), changed=1)
    fleetkit.recap(fleetkit.play("site.yml", inventory), changed=0)
    # the controller still talks to the central server only; the zone's executor sits behind the leaf node
    zone_host = site["zone_hosts"][1]
    assert fleetkit.hostname_through(_client(site, "管理网", target={"host": zone_host["addresses"]["zone"], "user": "root"})) \
        == zone_host["name"]
    leafz = lab.ssh(site["nats_host"]["name"], "python3 -c \"import urllib.request; print(urllib.request.urlopen("
                                               "'http://127.0.0.1:8222/leafz').read().decode())\"").stdout
    assert json.loads(leafz)["leafnodes"] == 1, leafz[-2000:]


def test_operator_mode_with_jwt_credentials(lab, site):
    import natsauth  # pylint: disable=import-outside-toplevel
    from nats_jwt.nkeys_ext import create_account_pair, create_user_pair  # pylint: disable=import-outside-toplevel
    from nats_jwt.v2.account_claims import AccountClaims  # pylint: disable=import-outside-toplevel
    from nats_jwt.v2.snippets import init_new_operator  # pylint: disable=import-outside-toplevel
    from nats_jwt.v2.user_claims import UserClaims  # pylint: disable=import-outside-toplevel

    scratch = str(site["scratch"])
    operator, operator_jwt = init_new_operator("natsops-lab")
    system = create_account_pair()
    fleet = create_account_pair()
    fleet_claims = AccountClaims(fleet.public_key.decode(), "FLEET")
    fleet_claims.nats.limits.memory_storage = 64 * 1024 * 1024  # JetStream for the account
    fleet_claims.nats.limits.disk_storage = 256 * 1024 * 1024
    preload = {system.public_key.decode(): AccountClaims(system.public_key.decode(), "SYS").encode(operator),
               fleet.public_key.decode(): fleet_claims.encode(operator)}
    user = create_user_pair()
    claims = UserClaims(sub=user.public_key.decode(), name="controller")
    claims.nats.issuer_account = fleet.public_key.decode()
    creds = natsauth.write(os.path.join(scratch, "controller.creds"), natsauth._creds(  # pylint: disable=protected-access
        claims.encode(fleet), user.seed.decode()))
    operator_file = natsauth.write(os.path.join(scratch, "operator.jwt"), operator_jwt + "\n")
    # the streams of the users' account (the audit stream among them) would be orphans in operator mode, where that
    # account does not exist, and /healthz would say so: a server changing its auth mode starts from an empty store here
    lab.ssh(site["nats_host"]["name"], "systemctl stop nats-server; rm -rf /var/lib/nats-server/jetstream")
    inventory = site["write"]("operator.json", nats_vars={
        "nats_server_users": [], "nats_server_operator_jwt_file": operator_file,
        "nats_server_system_account": system.public_key.decode(), "nats_server_resolver_preload": preload})
    first = fleetkit.play("nats_cluster.yml", inventory)
    fleetkit.recap(first, changed=1)
    # the role knows no user of the fleet's account here: it says how to make the audit stream instead
    assert "The audit stream natsops_audit (subjects natsops.audit.>) is not created: in operator (JWT) mode" in first.stdout
    fleetkit.recap(fleetkit.play("nats_cluster.yml", inventory), changed=0)

    async def with_creds():
        nc = await nats.connect(site["url"], tls=ssl.create_default_context(cafile=site["ca"]), user_credentials=creds,
                                connect_timeout=5, allow_reconnect=False)
        try:
            js = nc.jetstream()  # JetStream works for the account the operator signed
            await js.add_stream(name="LAB", subjects=["lab.>"], max_bytes=1024 * 1024)
            await js.publish("lab.one", b"1")
            return (await js.stream_info("LAB")).state.messages
        finally:
            await nc.close()

    assert asyncio.run(with_creds()) == 1

    async def with_a_password():
        await nats.connect(site["url"], tls=ssl.create_default_context(cafile=site["ca"]), user="controller",
                           password=PASSWORDS["controller"], allow_reconnect=False, max_reconnect_attempts=0,
                           connect_timeout=5)

    with pytest.raises(Exception):
        asyncio.run(with_a_password())
