# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Signed requests and pinned executors on a real NATS: who may run what, replays, forged replies, key
rotation, and the audit trail of it all (with none of the secrets planted in the requests)."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

import devenv
from ansible_collections.natsops.fleet.plugins.module_utils._client import (
    AsyncExecutorClient, CallerTrust, ExecutorTaskError, ExecutorUnreachable,
)
from ansible_collections.natsops.fleet.plugins.module_utils.wire import contract, signing

INSTANCE = "signed-host"
PLANTED = ["planted-become-1", "planted-ssh-2", "planted-env-3", "planted-nolog-4"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    paths = {}
    for name in ("controller", "next-controller", "stranger", "executor", "impostor"):
        paths[name] = str(folder / ("%s.nk" % name))
        with open(paths[name], "wb") as handle:
            handle.write(signing.generate_seed() + b"\n")
    publics = {name: signing.SigningKey.from_file(path).public_key for name, path in paths.items()}
    return paths, publics


@pytest.fixture(scope="module")
def signed_executor(nats_server, audit_stream_made, keys, tmp_path_factory):  # pylint: disable=unused-argument
    paths, publics = keys

    proc = devenv.ExecutorProcess(nats_server.url, [INSTANCE], log_dir=str(tmp_path_factory.mktemp("signed")), extra_args=[
        "--trusted-signer", publics["controller"], "--trusted-signer", publics["next-controller"],
        "--signing-key", paths["executor"], "--clock-skew", "0"])
    yield proc
    proc.stop()


@pytest.fixture
def pinned(tmp_path, keys):
    """known_executors pinning the executor's key for the instance id."""
    path = tmp_path / "known_executors"
    path.write_text("# instance id, executor key\n%s %s\n" % (INSTANCE, keys[1]["executor"]))
    return str(path)


def _run(coro):
    return asyncio.run(coro)


async def _client(url, signer=None, known=None, connect_timeout=5.0):
    nc = await nats.connect(url)
    return nc, AsyncExecutorClient(nc, INSTANCE, connect_timeout=connect_timeout, trust=CallerTrust(signer, known))


def test_only_requests_signed_by_a_trusted_key_run(nats_server, signed_executor, keys, pinned, tmp_path):
    paths, _publics = keys
    marker = tmp_path / "ran"

    async def scenario():
        outcomes = {}
        for who in ("controller", "next-controller", None, "stranger"):  # two trusted keys: rotation without downtime
            nc, client = await _client(nats_server.url, paths[who] if who else None, pinned)
            try:
                rc, out, _err = await client.exec_command(command="echo %s >> %s; echo ok" % (who, marker))
                outcomes[who] = (rc, out)
            except ExecutorTaskError as exc:
                outcomes[who] = exc.code
            finally:
                await nc.close()
        return outcomes

    outcomes = _run(scenario())
    assert outcomes["controller"] == (0, b"ok\n") and outcomes["next-controller"] == (0, b"ok\n")
    assert outcomes[None] == signing.E_UNSIGNED and outcomes["stranger"] == signing.E_UNTRUSTED_SIGNER
    assert marker.read_text().split() == ["controller", "next-controller"]


def test_a_captured_request_never_runs_twice(nats_server, signed_executor, keys, tmp_path):
    paths, _publics = keys
    marker = tmp_path / "ran"

    async def scenario():
        spy = await nats.connect(nats_server.url)
        captured = []

        async def capture(msg):
            captured.append((msg.subject, msg.data, dict(msg.headers or {})))

        await spy.subscribe(contract.subject("natsops", "exec", INSTANCE), cb=capture)  # a bystander that can read
        nc, client = await _client(nats_server.url, paths["controller"], connect_timeout=1.0)
        try:
            assert (await client.exec_command(command="echo x >> %s" % marker))[0] == 0
            await spy.flush()
            subj, body, headers = captured[0]
            codes = []
            for delay in (0, 2.5):  # at once (the nonce was seen), and after expiry (1 s, no clock skew allowed)
                await asyncio.sleep(delay)
                reply = await spy.request(subj, body, headers=headers, timeout=5)
                codes.append(json.loads(reply.data)["code"])
            return codes
        finally:
            await nc.close()
            await spy.close()

    assert _run(scenario()) == [signing.E_REPLAYED, contract.E_EXPIRED]
    assert marker.read_text() == "x\n"


def test_a_forged_reply_is_refused_and_returns_nothing(nats_server, signed_executor, keys, pinned, tmp_path):
    """An impostor subscribed to the instance id's subject answers first, signed with its own key or not at all:
    the caller, who pinned the real executor's key, refuses its acceptance and never sees its output."""
    paths, _publics = keys
    impostor_key = signing.SigningKey.from_file(paths["impostor"])

    async def scenario(sign):
        impostor = await nats.connect(nats_server.url)

        async def answer(msg):
            doc, _attachment = contract.unpack(msg.headers, msg.data)
            accepted = {"v": 1, "id": doc["id"], "executor": {"name": "evil", "service_id": "x", "version": "0"}}
            headers, body = contract.pack(contract.KIND_ACCEPTED, accepted)
            if sign:
                headers.update(impostor_key.sign(signing.signed_bytes(signing.RESULT_TAG, "%s:%s" % (doc["id"], doc["nonce"]), body)))
            await impostor.publish(msg.reply, body, headers=headers)
            headers, body = contract.pack(contract.KIND_DATA, None, b"forged output", seq=1, stream="stdout")
            await impostor.publish(doc["reply_to"], body, headers=headers)

        await impostor.subscribe("natsops.exec.impostor-host", cb=answer)  # it answers where no real executor does
        nc = await nats.connect(nats_server.url)
        client = AsyncExecutorClient(nc, "impostor-host", trust=CallerTrust(paths["controller"], pinned))
        try:
            with pytest.raises(ExecutorTaskError) as info:
                await client.exec_command(command="true")
            return info.value
        finally:
            await nc.close()
            await impostor.close()

    with open(pinned, "a", encoding="utf-8") as handle:
        handle.write("impostor-host %s\n" % keys[1]["executor"])
    for sign in (False, True):
        error = _run(scenario(sign))
        assert error.code == signing.E_INTEGRITY and "forged output" not in str(error), error
        assert error.details["cause"] == (signing.E_UNSIGNED if not sign else signing.E_UNTRUSTED_SIGNER), error.details


def test_replies_of_the_pinned_executor_are_accepted_and_checked(nats_server, signed_executor, keys, pinned):
    paths, _publics = keys

    async def scenario():
        nc, client = await _client(nats_server.url, paths["controller"], pinned)
        try:
            return await client.exec_command(command="printf hello")
        finally:
            await nc.close()

    assert _run(scenario()) == (0, b"hello", b"")


def test_the_audit_trail_holds_runs_and_refusals_but_no_secret(nats_server, signed_executor, keys, pinned):
    paths, _publics = keys

    async def scenario():
        nc, client = await _client(nats_server.url, paths["controller"], pinned)
        unsigned_nc, unsigned = await _client(nats_server.url, None, pinned)
        try:
            await client.exec_command(command="true", env={"DB_PASSWORD": PLANTED[2]},
                                      become={"success": "NEVER", "prompt_prefix": "pw:", "password": PLANTED[0], "timeout": 1})
        except (ExecutorTaskError, ExecutorUnreachable):
            pass  # the become fails (nothing prompts): what matters is what the trail says
        try:
            await client.exec_command(command="mysql -p%s" % PLANTED[3], no_log=True)
            over_ssh = AsyncExecutorClient(nc, INSTANCE, target={"host": "127.0.0.1", "port": 1, "user": "root",
                                                                 "password": PLANTED[1]},
                                           trust=CallerTrust(paths["controller"], pinned))
            with pytest.raises(ExecutorUnreachable):  # nothing listens on port 1: the SSH login fails at once
                await over_ssh.exec_command(command="true")
            with pytest.raises(ExecutorTaskError):
                await unsigned.exec_command(command="echo refused")
            await asyncio.sleep(1)  # the executor publishes its records in the background
            js = nc.jetstream()
            sub = await js.subscribe("natsops.audit.%s" % INSTANCE, ordered_consumer=True)
            records = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=1)
                except nats.errors.TimeoutError:
                    break
                records.append(msg.data.decode("utf-8"))
            return records
        finally:
            await nc.close()
            await unsigned_nc.close()

    records = _run(scenario())
    text = "\n".join(records)
    docs = [json.loads(r) for r in records]
    assert any(d["verdict"] == "refused" and d["code"] == signing.E_UNSIGNED for d in docs), text
    assert any(d["verdict"] == "ok" and d.get("command") == "<no_log>" for d in docs), text
    assert any(d.get("signer") == keys[1]["controller"] for d in docs), text
    assert any(d.get("target") == "root@127.0.0.1:1" and d["verdict"] == "failed" for d in docs), text
    for secret in PLANTED:
        assert secret not in text
    assert not any(secret in signed_executor.output() for secret in PLANTED)
