# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The natsops.fleet.nats_server role on real systemd hosts: a single server installed from a release archive
(file:// URL + checksum, as a mirror would serve it), then a 3-node JetStream cluster installed from a
binary on the controller (air-gapped), with an R3 stream that keeps serving while one node is down, and the
resource modules (stream, consumer, kv, object) scaling their streams from one replica to three on it. The role
makes the audit stream natsops_audit on each: one replica on a single server, three on the cluster."""

import asyncio
import hashlib
import json
import os
import subprocess
import tarfile

import nats
import pytest

import devenv
import fleetkit

pytestmark = pytest.mark.lab(hosts=4)

VERSION = "2.15.1"


def _inventory(lab, path, hosts, **group_vars):
    group_vars.setdefault("nats_server_allow_anonymous", True)
    return fleetkit.write_inventory(lab, path, {"nats_servers": {
        "vars": group_vars, "hosts": dict((h["name"], {"ansible_host": h["addresses"]["mgmt"]}) for h in hosts)}})


def _play(inventory, *extra):
    return fleetkit.play("nats_cluster.yml", inventory, *extra)


_recap = fleetkit.recap


def _main_pid(lab, host):
    return lab.ssh(host["name"], "systemctl show -p MainPID --value nats-server").stdout.strip()


def _varz(lab, host):
    out = lab.ssh(host["name"], "python3 -c \"import urllib.request; print(urllib.request.urlopen("
                                "'http://127.0.0.1:8222/varz').read().decode())\"").stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def hosts(lab):
    chosen = [h for h in lab.hosts if "mgmt" in h["addresses"] and h["role"] != "executor"][:3]
    assert len(chosen) == 3
    yield chosen
    fleetkit.remove_units(lab, chosen, "nats-server")


def test_single_server_from_an_archive(lab, hosts, tmp_path):
    # the upstream archive layout, served from a file:// URL (a mirror) and checked against its sha256
    name = "nats-server-v%s-linux-amd64" % VERSION
    archive = tmp_path / (name + ".tar.gz")
    with tarfile.open(str(archive), "w:gz") as tar:
        tar.add(devenv.tool("nats-server"), arcname="%s/nats-server" % name)
    checksum = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    host = hosts[0]
    inventory = _inventory(lab, str(tmp_path / "single.json"), [host], nats_server_archive_url="file://%s" % archive,
                           nats_server_archive_checksum=checksum, nats_server_cache_dir=str(tmp_path / "cache"))

    wrong = _inventory(lab, str(tmp_path / "wrong.json"), [host], nats_server_archive_url="file://%s" % archive,
                       nats_server_archive_checksum="sha256:" + "0" * 64, nats_server_cache_dir=str(tmp_path / "cache2"))
    refused = _play(wrong)
    assert refused.returncode != 0 and "checksum" in refused.stdout.lower(), refused.stdout[-3000:]
    assert lab.ssh(host["name"], "test -e /usr/local/bin/nats-server && echo there || echo absent").stdout.strip() == "absent"

    _recap(_play(inventory), changed=1)
    state = lab.ssh(host["name"], "systemctl is-active nats-server; systemctl is-enabled nats-server; "
                                  "stat -c '%U %a' /etc/nats-server/nats-server.conf /var/lib/nats-server/jetstream; "
                                  "ps -o user= -C nats-server").stdout.split()
    assert state == ["active", "enabled", "root", "640", "nats", "750", "nats"], state
    _recap(_play(inventory), changed=0)
    _recap(_play(inventory, "--check"), changed=0)

    async def jetstream():
        nc = await nats.connect("nats://%s:4222" % host["addresses"]["mgmt"], connect_timeout=5, max_reconnect_attempts=1)
        try:
            info = await nc.jetstream().account_info()
            audit = (await nc.jetstream().stream_info("natsops_audit")).config
            return info.limits is not None, audit.subjects, audit.num_replicas
        finally:
            await nc.close()
    assert asyncio.run(jetstream()) == (True, ["natsops.audit.>"], 1)

    # a reloadable change is a SIGHUP (same process); a listen change is a restart
    pid = _main_pid(lab, host)
    _recap(_play(inventory, "-e", "nats_server_max_payload=2097152"), changed=1)
    assert _main_pid(lab, host) == pid and _varz(lab, host)["max_payload"] == 2097152
    _recap(_play(inventory, "-e", "nats_server_max_payload=2097152"), changed=0)
    _recap(_play(inventory, "-e", "nats_server_max_payload=2097152", "-e", "nats_server_port=4223"), changed=1)
    assert _main_pid(lab, host) != pid and _varz(lab, host)["port"] == 4223


_tls_files = fleetkit.tls_files


def test_os_package_from_a_local_repository(lab, hosts, tmp_path):
    """install_method package: Debian's nats-server, from a local apt repository (the lab hosts reach no mirror)."""
    import labctl  # pylint: disable=import-outside-toplevel
    # the package, and python3-apt (with what it needs) that Ansible's apt module uses
    wanted = ["nats-server", "python3-apt", "python-apt-common", "distro-info-data", "iso-codes", "lsb-release"]
    download = subprocess.run(["apt-get", "download"] + wanted, cwd=str(tmp_path), capture_output=True, text=True,
                              timeout=300, check=False)
    debs = sorted(tmp_path.glob("*.deb"))
    if download.returncode != 0 or len(debs) != len(wanted):
        pytest.skip("apt-get download %s failed on this machine: %s" % (" ".join(wanted), download.stderr[-500:]))
    packages = ""
    host = hosts[1]
    repo = "/var/local/natsops-apt"
    for deb in debs:
        fields = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout.strip()
        data = deb.read_bytes()
        packages += "%s\nFilename: ./%s\nSize: %d\nSHA256: %s\n\n" % (fields, deb.name, len(data), hashlib.sha256(data).hexdigest())
        subprocess.run(labctl._ssh_argv(host["name"]) + ["mkdir -p %s && cat > %s/%s" % (repo, repo, deb.name)],  # pylint: disable=protected-access
                       input=data, check=True, timeout=120)
    version = next(d.name.split("_")[1].split("-")[0] for d in debs if d.name.startswith("nats-server_"))
    prepared = lab.ssh(host["name"], "cat > %s/Packages && echo 'deb [trusted=yes] file:%s ./' > /etc/apt/sources.list.d/natsops-local.list"
                                     " && apt-get update -q -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/natsops-local.list"
                                     " -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 && apt-get install -y -q python3-apt"
                                     % (repo, repo), input_text=packages, timeout=300)
    assert prepared.returncode == 0, prepared.stdout[-2000:] + prepared.stderr[-2000:]
    inventory = _inventory(lab, str(tmp_path / "package.json"), [host], nats_server_install_method="package")
    try:
        _recap(_play(inventory), changed=1)
        _recap(_play(inventory), changed=0)
        state = lab.ssh(host["name"], "dpkg-query -W -f '${Status}\\n' nats-server; systemctl is-active nats-server; "
                                      "systemctl show -p ExecStart --value nats-server").stdout
        assert "install ok installed" in state and "active" in state and "/usr/sbin/nats-server -c /etc/nats-server/nats-server.conf" in state, state
        assert _varz(lab, host)["version"] == version
    finally:
        fleetkit.remove_units(lab, [host], "nats-server")
        lab.ssh(host["name"], "apt-get purge -y -q nats-server >/dev/null; rm -rf %s /etc/apt/sources.list.d/natsops-local.list"
                              % repo, timeout=300)


def test_tls_for_clients_and_certificate_rotation_by_reload(lab, hosts, tmp_path):
    import ssl  # pylint: disable=import-outside-toplevel
    host = hosts[0]
    address = host["addresses"]["mgmt"]
    first = tmp_path / "first"
    first.mkdir()
    ca, cert, key = _tls_files(str(first), [address], 100)

    def tls_inventory(name, ca, cert, key):
        return _inventory(lab, str(tmp_path / name), [host], nats_server_install_method="local",
                          nats_server_local_file=devenv.tool("nats-server"), nats_server_tls_cert_file=cert,
                          nats_server_tls_key_file=key, nats_server_tls_ca_file=ca)

    inventory = tls_inventory("tls.json", ca, cert, key)
    _recap(_play(inventory), changed=1)
    _recap(_play(inventory), changed=0)

    async def connect(ca_path, url="tls://%s:4222" % address):
        context = ssl.create_default_context(cafile=ca_path)
        nc = await nats.connect(url, tls=context, connect_timeout=5, max_reconnect_attempts=1, allow_reconnect=False)
        try:
            return (await nc.jetstream().account_info()) is not None
        finally:
            await nc.close()

    assert asyncio.run(connect(ca))
    with pytest.raises(Exception):  # a client that does not trust this CA is refused
        asyncio.run(connect(_tls_files(str(tmp_path), [address], 200)[0]))
    # rotation: a new CA and certificate are applied with a reload (same process)
    pid = _main_pid(lab, host)
    second = tmp_path / "second"
    second.mkdir()
    ca2, cert2, key2 = _tls_files(str(second), [address], 300)
    _recap(_play(tls_inventory("tls2.json", ca2, cert2, key2)), changed=1)
    assert _main_pid(lab, host) == pid
    assert asyncio.run(connect(ca2))
    state = lab.ssh(host["name"], "stat -c '%U:%G %a' /etc/nats-server/tls/key.pem").stdout.split()
    assert state == ["root:nats", "640"]


def _openssl_certificates(directory, addresses, usages):
    """A CA made with openssl and, per name in ``usages`` ({name: extendedKeyUsage value}), a certificate for the IP
    ``addresses`` signed by it; returns {"ca": path, name: (cert, key)}."""
    def openssl(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=60)
    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=natsops lab openssl CA", "-keyout", ca_key, "-out", ca)
    made = {"ca": ca}
    for name, usage in usages.items():
        key, csr, cert, ext = (os.path.join(directory, "%s.%s" % (name, suffix)) for suffix in ("key", "csr", "pem", "ext"))
        with open(ext, "w", encoding="utf-8") as handle:
            handle.write("subjectAltName=%s\nextendedKeyUsage=%s\n" % (",".join("IP:" + a for a in addresses), usage))
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=%s" % name,
                "-keyout", key, "-out", csr)
        openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-extfile", ext,
                "-out", cert)
        made[name] = (cert, key)
    return made


def test_a_route_certificate_without_client_auth_is_refused_before_anything_changes(lab, hosts, tmp_path):
    # a certificate issued for serverAuth only: routes dial each other with it, the other members refuse it, and the
    # cluster would never form
    certs = _openssl_certificates(str(tmp_path), [h["addresses"]["mgmt"] for h in hosts], {"server": "serverAuth"})
    cert, key = certs["server"]
    before = [lab.ssh(h["name"], "sha256sum /etc/nats-server/nats-server.conf 2>&1").stdout for h in hosts]
    inventory = _inventory(lab, str(tmp_path / "server-auth-only.json"), hosts, nats_server_install_method="local",
                           nats_server_local_file=devenv.tool("nats-server"), nats_server_cluster_name="natsops-lab",
                           nats_server_tls_cert_file=cert, nats_server_tls_key_file=key, nats_server_tls_ca_file=certs["ca"])
    result = _play(inventory)
    assert result.returncode != 0, result.stdout[-3000:]
    failures = [line for line in result.stdout.splitlines() if line.startswith("fatal:")]
    assert len(failures) == 3, result.stdout[-4000:]
    for line in failures:
        for part in ("the certificate %s (nats_server_tls_cert_file)" % cert, "allows only 'TLS Web Server Authentication'",
                     "routes also act as TLS clients", "extendedKeyUsage = serverAuth, clientAuth",
                     "nats_server_cluster_tls_cert_file"):
            assert part in line, (part, line)
    assert [lab.ssh(h["name"], "sha256sum /etc/nats-server/nats-server.conf 2>&1").stdout for h in hosts] == before


def test_three_node_cluster_keeps_an_r3_stream_with_one_node_down(lab, hosts, tmp_path):
    import ssl  # pylint: disable=import-outside-toplevel
    # TLS for clients and for the routes between the nodes: the clients' certificate is for serverAuth only, the routes
    # have one of their own with clientAuth too (nats_server_cluster_tls_cert_file); each names all three addresses
    certs = _openssl_certificates(str(tmp_path), [h["addresses"]["mgmt"] for h in hosts],
                                  {"server": "serverAuth", "route": "serverAuth,clientAuth"})
    ca, (cert, key), (route_cert, route_key) = certs["ca"], certs["server"], certs["route"]
    inventory = _inventory(lab, str(tmp_path / "cluster.json"), hosts, nats_server_install_method="local",
                           nats_server_local_file=devenv.tool("nats-server"), nats_server_cluster_name="natsops-lab",
                           nats_server_jetstream_store_dir="/var/lib/nats-cluster/jetstream",
                           nats_server_tls_cert_file=cert, nats_server_tls_key_file=key, nats_server_tls_ca_file=ca,
                           nats_server_cluster_tls_cert_file=route_cert, nats_server_cluster_tls_key_file=route_key)
    _recap(_play(inventory), changed=1)
    _recap(_play(inventory), changed=0)
    urls = ["tls://%s:4222" % h["addresses"]["mgmt"] for h in hosts]
    # the routes require TLS (and the role already saw all three members in the JetStream meta group)
    cluster = _varz(lab, hosts[0])["cluster"]
    assert cluster.get("tls_required") is True and cluster.get("tls_verify") is True, cluster

    async def stream_through_an_outage():
        nc = await nats.connect(servers=urls, tls=ssl.create_default_context(cafile=ca), connect_timeout=5,
                                max_reconnect_attempts=30, reconnect_time_wait=0.5)
        js = nc.jetstream()
        try:
            await js.add_stream(name="ORDERS", subjects=["orders.>"], num_replicas=3)
            for i in range(10):
                await js.publish("orders.new", b"order-%d" % i)
            info = await js.stream_info("ORDERS")
            assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
            # one node down (lame duck), the stream keeps taking and serving messages
            down = hosts[2]
            await asyncio.get_running_loop().run_in_executor(None, lambda: lab.ssh(down["name"], "systemctl stop nats-server"))
            for i in range(10, 20):
                await js.publish("orders.new", b"order-%d" % i, timeout=10)
            info = await js.stream_info("ORDERS")
            assert info.state.messages == 20
            msg = await js.get_msg("ORDERS", 20)
            assert msg.data == b"order-19"
            await asyncio.get_running_loop().run_in_executor(None, lambda: lab.ssh(down["name"], "systemctl start nats-server"))
        finally:
            await nc.close()

    asyncio.run(stream_through_an_outage())
    _recap(_play(inventory), changed=0)  # the node came back; the role finds nothing to change

    # the resource modules on the role-built cluster: stream, key-value and object buckets made with one
    # replica, then scaled to three in the four steps (check, real, idempotent check, idempotent)
    resources = _resources_play(str(tmp_path), urls, ca)
    _recap(fleetkit.play(resources, "localhost,", "-e", "replicas=1"), changed=1)
    for check, changed in ((True, 1), (False, 1), (True, 0), (False, 0)):
        _recap(fleetkit.play(resources, "localhost,", "-e", "replicas=3", *(["--check"] if check else [])), changed=changed)

    async def replicas():
        nc = await nats.connect(servers=urls, tls=ssl.create_default_context(cafile=ca), connect_timeout=5)
        try:
            js = nc.jetstream()
            found = {}
            for stream in ("EVENTS", "KV_registry", "OBJ_artifacts", "natsops_audit"):
                info = await js.stream_info(stream)
                found[stream] = (info.config.num_replicas, len(info.cluster.replicas or []) + 1)
            entry = await (await js.key_value("registry")).get("zone-a")
            return found, entry.value
        finally:
            await nc.close()
    found, value = asyncio.run(replicas())
    assert found == {"EVENTS": (3, 3), "KV_registry": (3, 3), "OBJ_artifacts": (3, 3), "natsops_audit": (3, 3)} \
        and value == b"up", found


def _resources_play(directory, urls, ca):
    """A localhost play of natsops.fleet resource modules with {{ replicas }} replicas; returns its path."""
    path = os.path.join(directory, "resources.yml")
    tasks = [{"natsops.fleet.stream": {"name": "EVENTS", "subjects": ["events.>"], "replicas": "{{ replicas }}"}},
             {"natsops.fleet.consumer": {"stream": "EVENTS", "name": "audit", "ack_wait": "30s"}},
             {"natsops.fleet.kv": {"bucket": "registry", "ttl": "5m", "replicas": "{{ replicas }}"}},
             {"natsops.fleet.kv": {"bucket": "registry", "name": "zone-a", "value": "up"}},
             {"natsops.fleet.object": {"bucket": "artifacts", "replicas": "{{ replicas }}"}},
             {"natsops.fleet.object": {"bucket": "artifacts", "name": "motd", "content": "hello"}}]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump([{"name": "NATS resources", "hosts": "localhost", "connection": "local", "gather_facts": False,
                    "vars": {"ansible_python_interpreter": devenv.tool("python")},
                    "module_defaults": {"group/natsops.fleet.nats": {"servers": urls, "ca": ca}}, "tasks": tasks}], handle)
    return path
