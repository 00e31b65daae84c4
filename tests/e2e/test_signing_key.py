# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.signing_key through ansible-playbook: a seed file created in four steps (check, real, idempotent
check, idempotent), its mode changed and the file removed the same way, the public key of an existing .creds file
read without touching it, and the key it makes signs requests that an executor trusting it runs (and refuses
unsigned)."""

from __future__ import annotations

import asyncio
import os
import stat

import nats
import pytest

import devenv
from ansible_collections.natsops.fleet.plugins.module_utils._client import AsyncExecutorClient, CallerTrust, ExecutorTaskError
from ansible_collections.natsops.fleet.plugins.module_utils.wire import signing


def test_a_key_file_in_four_steps(module_task, four_steps, tmp_path):
    path = tmp_path / "natsops" / "signing.nk"
    first, second = four_steps("signing_key", {"path": str(path)})
    assert "public_key" not in first and second["public_key"] == signing.SigningKey.from_file(str(path)).public_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    seed = path.read_bytes()
    assert seed.decode().strip() not in str(second)

    # the same key on every later run, whatever the task asks of the file's attributes
    shown = module_task("signing_key", {"path": str(path), "mode": "0640"}, check=True, diff=True)["diff"]
    assert shown["before"]["mode"] == "0600" and shown["after"]["mode"] == "0640"
    assert shown["after"]["public_key"] == second["public_key"]
    four_steps("signing_key", {"path": str(path), "mode": "0640"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_bytes() == seed
    assert module_task("signing_key", {"path": str(path)})["public_key"] == second["public_key"]

    four_steps("signing_key", {"path": str(path), "state": "absent"})
    assert not path.exists()


def test_an_existing_creds_file_is_read_not_changed(module_task, tmp_path):
    seed = signing.generate_seed()
    creds = tmp_path / "controller.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\neyJ0.e30.c2ln\n------END NATS USER JWT------\n\n"
                     "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n" % seed.decode())
    creds.chmod(0o600)
    before = creds.read_bytes()
    result = module_task("signing_key", {"path": str(creds)})
    assert not result["changed"] and result["public_key"] == signing.SigningKey(seed, "test").public_key
    assert creds.read_bytes() == before

    notes = tmp_path / "notes.txt"
    notes.write_text("no key here\n")
    refused = module_task("signing_key", {"path": str(notes)})
    assert refused["failed"] and "holds no NKey seed" in refused["msg"] and notes.read_text() == "no key here\n"


def test_the_key_it_makes_is_one_an_executor_trusts(nats_server, module_task, tmp_path):
    path = str(tmp_path / "controller.nk")
    public_key = module_task("signing_key", {"path": path})["public_key"]
    proc = devenv.ExecutorProcess(nats_server.url, ["signing-key-host"], log_dir=str(tmp_path),
                                  extra_args=["--trusted-signer", public_key])

    async def run(key):
        nc = await nats.connect(nats_server.url)
        try:
            client = AsyncExecutorClient(nc, "signing-key-host", trust=CallerTrust(key, os.devnull))
            return await client.exec_command(command="printf signed")
        finally:
            await nc.close()

    try:
        assert asyncio.run(run(path)) == (0, b"signed", b"")
        with pytest.raises(ExecutorTaskError) as refused:
            asyncio.run(run(None))
        assert refused.value.code == signing.E_UNSIGNED
    finally:
        proc.stop()
