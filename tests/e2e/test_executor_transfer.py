# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.executor_transfer against a real nats-server with JetStream and an executor (agent mode);
SSH mode to real hosts is in tests/lab/test_zone.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import nats
import nats.js.errors


def _transfer(**args):
    return {"name": "transfer", "natsops.fleet.executor_transfer": dict({"executor": "e2e-host"}, **args),
            "register": "placed"}


def _play(local_play, tmp_path, check=False, **args):
    """Run one executor_transfer task; returns its registered result (read back from a file)."""
    out = tmp_path / "result.json"
    run = local_play([_transfer(**args), {
        "name": "keep the result", "check_mode": False,
        "ansible.builtin.copy": {"content": "{{ placed | to_json }}", "dest": str(out)}}], check=check)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    out.unlink()
    return result


async def _object_names(url, bucket):
    nc = await nats.connect(url)
    try:
        store = await nc.jetstream().object_store(bucket)
        return set(info.name for info in await store.list())
    finally:
        await nc.close()


def test_src_is_uploaded_once_placed_and_idempotent(local_play, nats_server, tmp_path):
    src = tmp_path / "src" / "probe.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(400 * 1024))
    dest = tmp_path / "placed" / "probe.bin"
    dest.parent.mkdir()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()

    first = _play(local_play, tmp_path, src=str(src), dest=str(dest), mode="0640")
    assert first["changed"] is True and first["uploaded"] is True and first["before"] is None
    assert first["object"] == "sha256/" + digest and first["bucket"] == "natsops" and first["sha256"] == digest
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest and (os.stat(str(dest)).st_mode & 0o777) == 0o640
    assert sorted(os.listdir(str(dest.parent))) == ["probe.bin"]  # no temp file left

    second = _play(local_play, tmp_path, src=str(src), dest=str(dest), mode="0640")
    assert second["changed"] is False and second["uploaded"] is False

    # a mode change alone rewrites nothing but the mode
    third = _play(local_play, tmp_path, src=str(src), dest=str(dest), mode="0600")
    assert third["changed"] is True and (os.stat(str(dest)).st_mode & 0o777) == 0o600

    # check mode: new content is reported, nothing uploaded or written
    src.write_bytes(b"new content")
    checked = _play(local_play, tmp_path, check=True, src=str(src), dest=str(dest))
    assert checked["changed"] is True and checked["uploaded"] is False
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert "sha256/" + digest in asyncio.run(_object_names(nats_server.url, "natsops"))
    assert "sha256/" + hashlib.sha256(b"new content").hexdigest() not in asyncio.run(_object_names(nats_server.url, "natsops"))


def test_object_and_remote_src(local_play, tmp_path, nats_server):
    data = b"from the store\n"

    async def put():
        nc = await nats.connect(nats_server.url)
        try:
            try:
                store = await nc.jetstream().object_store("bklite")
            except nats.js.errors.BucketNotFoundError:
                store = await nc.jetstream().create_object_store("bklite")
            await store.put("linux/x86_64/tool/1.0/tool.txt", data)
        finally:
            await nc.close()

    asyncio.run(put())
    dest = tmp_path / "tool.txt"
    placed = _play(local_play, tmp_path, bucket="bklite", object="linux/x86_64/tool/1.0/tool.txt", dest=str(dest))
    assert placed["changed"] is True and dest.read_bytes() == data and (os.stat(str(dest)).st_mode & 0o777) == 0o644
    copy = tmp_path / "copy.txt"
    placed = _play(local_play, tmp_path, remote_src=str(dest), dest=str(copy))
    assert placed["changed"] is True and copy.read_bytes() == data and "bucket" not in placed


def test_failures_are_clear_and_leave_nothing(local_play, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("x")
    missing_dir = local_play([_transfer(src=str(src), dest=str(tmp_path / "nope" / "f.txt"))])
    assert missing_dir.returncode != 0 and "destination directory %s does not exist" % (tmp_path / "nope") in missing_dir.stdout
    missing_object = local_play([_transfer(object="no/such/object", dest=str(tmp_path / "g.txt"))])
    assert missing_object.returncode != 0 and "object 'no/such/object' is not in the Object Store bucket 'natsops'" in missing_object.stdout
    relative = local_play([_transfer(src=str(src), dest="relative/path")])
    assert relative.returncode != 0 and "dest must be an absolute path" in relative.stdout
    assert sorted(os.listdir(str(tmp_path))) == ["f.txt", "play.yml"]  # nothing half-written anywhere


def test_bklite_protocol_is_idempotent_too(local_play, tmp_path, compat):  # pylint: disable=unused-argument
    src = tmp_path / "src" / "tool.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(64 * 1024))
    dest = tmp_path / "bk" / "tool.bin"
    dest.parent.mkdir()
    args = {"src": str(src), "dest": str(dest), "mode": "0750", "protocol": "bklite", "executor": "bk-shared"}
    first = _play(local_play, tmp_path, **args)
    assert first["changed"] is True and first["bucket"] == "bklite"
    assert dest.read_bytes() == src.read_bytes() and (os.stat(str(dest)).st_mode & 0o777) == 0o750
    assert _play(local_play, tmp_path, **args)["changed"] is False
    assert sorted(os.listdir(str(dest.parent))) == ["tool.bin"]
