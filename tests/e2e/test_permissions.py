# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The least-privilege permission model (wire/permissions.py, rendered by the natsops.fleet.nats_authorization
filter) on a real nats-server: the fleet works with it, and each identity is refused what it must not do."""

import asyncio
import hashlib
import json
import os
import sys

import nats
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

import devenv  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.natsops.fleet.plugins.filter.nats_authorization import nats_authorization  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # noqa: E402  pylint: disable=wrong-import-position
from natsauth import permission_violations  # noqa: E402  pylint: disable=wrong-import-position

PASSWORDS = {"controller": "ctl-Pw-7", "exec-mgmt": "mgmt-Pw-8", "exec-default": "dflt-Pw-9", "probe-web1": "probe-Pw-0"}
IDENTITIES = [
    {"name": "controller", "role": "controller", "password": PASSWORDS["controller"], "bklite": True},
    {"name": "exec-mgmt", "role": "executor", "instances": ["管理网"], "password": PASSWORDS["exec-mgmt"], "bklite": True},
    {"name": "exec-default", "role": "executor", "instances": ["default"], "password": PASSWORDS["exec-default"]},
    {"name": "probe-web1", "role": "probe", "instances": ["web1"], "password": PASSWORDS["probe-web1"]},
]


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    blocks = nats_authorization(IDENTITIES)
    config = "".join("%s: %s\n" % (key, json.dumps(value, ensure_ascii=False)) for key, value in sorted(blocks.items()))
    server = devenv.NatsServer(extra_config=config)
    logs = str(tmp_path_factory.mktemp("executors"))
    started = []
    try:
        for name, instance, extra in (("exec-mgmt", "管理网", ["--bklite-compat"]), ("exec-default", "default", []),
                                      ("probe-web1", "web1", [])):
            started.append(devenv.ExecutorProcess(
                server.url, [instance], ["--user", name, "--inbox-prefix", "_INBOX." + name, "--name", name] + extra,
                env={"NATS_PASSWORD": PASSWORDS[name]}, log_dir=logs))
        yield {"server": server, "executors": started}
    finally:
        for proc in started:
            proc.stop()
        server.stop()


def _controller(secured, instance):
    return ExecutorClient({"servers": secured["server"].url, "user": "controller",
                           "password": PASSWORDS["controller"]}, instance).connect()


def test_the_fleet_works_under_its_permissions(secured, tmp_path):
    for instance, name in (("管理网", "exec-mgmt"), ("default", "exec-default"), ("web1", "probe-web1")):
        client = _controller(secured, instance)
        try:
            rc, out, err = client.exec_command(command="echo served-by-%s" % name)
            assert (rc, out, err) == (0, ("served-by-%s\n" % name).encode(), b"")
            assert sorted(i for e in client.discover() for i in e["instances"]) == ["default", "web1", "管理网"]
        finally:
            client.close()
    # executor_transfer: the controller uploads to the Object Store, the executor reads it with its narrow rights
    data = os.urandom(300 * 1024)
    source = tmp_path / "payload.bin"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    client = _controller(secured, "管理网")
    try:
        assert client.upload_object("natsops", "sha256/" + digest, str(source), digest)
        dest = tmp_path / "placed.bin"
        result = client.transfer(str(dest), bucket="natsops", object_name="sha256/" + digest, sha256=digest)
        assert result["changed"] and dest.read_bytes() == data
        assert client.bklite_health()  # the BK-Lite subjects of 管理网 are served (and callable by the controller)
    finally:
        client.close()
    for proc in secured["executors"]:
        text = proc.output()
        assert "Permissions Violation" not in text and "permissions violation" not in text.lower(), text[-2000:]
        assert not any(secret in text for secret in PASSWORDS.values())


async def _violations(url, name, actions):
    """The permission errors the server reported while ``name`` ran ``actions(nc)``."""
    return await permission_violations(actions, servers=url, user=name, password=PASSWORDS[name], inbox_prefix="_INBOX." + name)


def test_an_executor_identity_cannot_call_or_serve_another_zone_or_read_other_inboxes(secured):
    url = secured["server"].url

    async def call_other_zone(nc):
        with pytest.raises(Exception):
            await nc.request("natsops.exec.管理网", b"{}", timeout=1)

    assert any("natsops.exec.管理网" in e for e in asyncio.run(_violations(url, "exec-default", call_other_zone)))

    async def serve_other_zone(nc):
        await nc.subscribe("natsops.exec.管理网", queue="natsops-executors")

    assert any("natsops.exec.管理网" in e for e in asyncio.run(_violations(url, "exec-default", serve_other_zone)))

    async def snoop(nc):
        await nc.subscribe("_INBOX.>")
        await nc.subscribe("_INBOX.exec-mgmt.>")

    found = asyncio.run(_violations(url, "exec-default", snoop))
    assert len(found) == 2 and all("subscription" in e.lower() for e in found), found

    async def own_work(nc):  # what it may do: serve its zone, reply below _INBOX
        await nc.subscribe("natsops.exec.default", queue="natsops-executors")
        await nc.publish("_INBOX.controller.x", b"")

    assert asyncio.run(_violations(url, "exec-default", own_work)) == []
    # and it may see which executors are online (the executor role's check after a deployment)
    client = ExecutorClient({"servers": url, "user": "exec-default", "password": PASSWORDS["exec-default"],
                             "inbox_prefix": "_INBOX.exec-default"}, "default").connect()
    try:
        assert sorted(i for e in client.discover() for i in e["instances"]) == ["default", "web1", "管理网"]
    finally:
        client.close()


def test_a_probe_identity_only_writes_its_own_registry_key(secured):
    url = secured["server"].url

    async def scenario():
        controller = await nats.connect(url, user="controller", password=PASSWORDS["controller"], connect_timeout=5)
        js = controller.jetstream()
        kv = await js.create_key_value(bucket="natsops_registry", ttl=60)

        async def probe_actions(nc):
            await nc.publish("$KV.natsops_registry.web1", b"{}")       # its own record: allowed
            await nc.publish("$KV.natsops_registry.web2", b"{}")       # another host's record
            await nc.publish("natsops.exec.default", b"{}")           # calling an executor
            await nc.publish("natsops.exec.web1", b"{}")              # even its own subject
            await nc.subscribe("natsops.exec.default")                # serving another host

        try:
            found = await _violations(url, "probe-web1", probe_actions)
            await asyncio.sleep(0.2)
            try:
                keys = sorted(await kv.keys())
            finally:
                await js.delete_key_value("natsops_registry")
            return found, keys
        finally:
            await controller.close()

    found, keys = asyncio.run(scenario())
    assert keys == ["web1"]
    for subject in ("$KV.natsops_registry.web2", "natsops.exec.default", "natsops.exec.web1"):
        assert any(subject.lower() in e.lower() for e in found), (subject, found)  # nats-py lowercases the message
    assert len(found) == 4, found


def _server_for(**kwargs):
    blocks = nats_authorization(kwargs.pop("identities", []), **kwargs)
    return devenv.NatsServer(extra_config="".join("%s: %s\n" % (k, json.dumps(v, ensure_ascii=False))
                                                  for k, v in sorted(blocks.items())))


def test_accounts_keep_their_subjects_and_jetstream_apart():
    server = _server_for(identities=[
        {"name": "controller", "role": "controller", "password": "ctl", "account": "FLEET"},
        {"name": "other", "role": "admin", "password": "oth", "account": "OTHER"}],
        accounts={"FLEET": {"jetstream": True}, "OTHER": {}})

    async def scenario():
        fleet = await nats.connect(server.url, user="controller", password="ctl", connect_timeout=5)
        other = await nats.connect(server.url, user="other", password="oth", connect_timeout=5)
        try:
            seen = []

            async def on_msg(msg):
                seen.append(msg.data)

            await fleet.subscribe("_INBOX.cross.h1", cb=on_msg)
            await fleet.flush()
            await other.publish("_INBOX.cross.h1", b"from another account")
            await other.flush()
            await asyncio.sleep(0.3)
            js = fleet.jetstream()
            await js.add_stream(name="FLEETSTREAM", subjects=["natsops.events.*"], max_bytes=1024 * 1024)
            with pytest.raises(Exception):  # no JetStream in OTHER
                await other.jetstream().account_info()
            return seen
        finally:
            await fleet.close()
            await other.close()

    try:
        assert asyncio.run(scenario()) == []
    finally:
        server.stop()


def test_a_token_server():
    server = _server_for(token="tok-Zz-42")

    async def connect(token):
        nc = await nats.connect(server.url, token=token, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=0)
        await nc.close()

    try:
        asyncio.run(connect("tok-Zz-42"))
        with pytest.raises(Exception):
            asyncio.run(connect("wrong"))
        assert "tok-Zz-42" not in open(server.config, encoding="utf-8").read()
    finally:
        server.stop()
