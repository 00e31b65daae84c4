# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.kv and the natsops.fleet.kv lookup against a real nats-server: buckets and keys in four steps
(check, real, idempotent check, idempotent), compare-and-set, deletion with and without history, bad input."""

from __future__ import annotations

import asyncio
import json

import nats
import nats.js.errors


async def _kv(url, bucket, key=None):
    """(stream config of the bucket or None, (value, revision) of the key or None)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            config = (await js.stream_info("KV_%s" % bucket)).config
        except nats.js.errors.NotFoundError:
            return None, None
        if key is None:
            return config, None
        try:
            entry = await (await js.key_value(bucket)).get(key)
            return config, (entry.value.decode(), entry.revision)
        except nats.js.errors.KeyNotFoundError:
            return config, None
    finally:
        await nc.close()


async def _history(url, bucket, key):
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        try:
            return [(e.value, e.operation) for e in await kv.history(key)]
        except nats.js.errors.NoKeysError:
            return []
    finally:
        await nc.close()


def test_bucket_lifecycle(module_task, nats_server, four_steps):
    url = nats_server.url
    args = {"bucket": "registry", "ttl": "5m", "history": 3, "max_bytes": "16MB", "description": "probes"}
    first, second = four_steps("kv", args)
    assert first["bucket"] == {} and second["bucket"]["name"] == "KV_registry"
    config = asyncio.run(_kv(url, "registry"))[0]
    assert config.max_age == 300 and config.max_msgs_per_subject == 3 and config.max_bytes == 16 * 1024 * 1024
    assert second["bucket"]["max_msgs_per_subject"] == 3 and "ttl" in second["changed_settings"]

    # a change of one setting: check shows it and changes nothing, then it is applied once
    checked = module_task("kv", dict(args, ttl="1m"), check=True, diff=True)
    assert checked["changed_settings"] == ["ttl"], checked  # the option, in the units the task uses
    assert checked["diff"] == {"before": {"ttl": "5m", "history": 3, "max_bytes": "16MB", "description": "probes"},
                               "after": {"ttl": "1m", "history": 3, "max_bytes": "16MB", "description": "probes"}}
    assert asyncio.run(_kv(url, "registry"))[0].max_age == 300
    assert [module_task("kv", dict(args, ttl="1m"))["changed"] for attempt in range(2)] == [True, False]
    config = asyncio.run(_kv(url, "registry"))[0]
    assert config.max_age == 60 and config.duplicate_window <= 60
    refused = module_task("kv", {"bucket": "registry", "storage": "memory"})
    assert refused["failed"] and "storage of bucket registry cannot change" in refused["msg"]

    four_steps("kv", {"bucket": "registry", "state": "absent"})
    assert asyncio.run(_kv(url, "registry")) == (None, None)


def test_keys_and_lookup(module_task, local_play, nats_server, tmp_path, four_steps):
    url = nats_server.url
    assert not module_task("kv", {"bucket": "config", "history": 5}).get("failed")
    first, second = four_steps("kv", {"bucket": "config", "name": "rollout.batch_size", "value": "20"})
    assert first["entry"]["revision"] == 0 and second["entry"]["value"] == "20"
    assert asyncio.run(_kv(url, "config", "rollout.batch_size"))[1] == ("20", second["entry"]["revision"])

    # structured values are stored as canonical JSON, so key order does not make a change
    four_steps("kv", {"bucket": "config", "name": "maintenance", "json": {"enabled": True, "until": "06:00"}})
    assert not module_task("kv", {"bucket": "config", "name": "maintenance", "json": {"until": "06:00", "enabled": True}})["changed"]
    assert json.loads(asyncio.run(_kv(url, "config", "maintenance"))[1][0]) == {"enabled": True, "until": "06:00"}

    # diff of a value change
    diff = module_task("kv", {"bucket": "config", "name": "rollout.batch_size", "value": "30"}, check=True, diff=True)
    assert diff["diff"] == {"before": "20\n", "after": "30\n"}

    # compare-and-set: a stale revision fails and writes nothing; the current one succeeds
    revision = asyncio.run(_kv(url, "config", "rollout.batch_size"))[1][1]
    stale = module_task("kv", {"bucket": "config", "name": "rollout.batch_size", "value": "30", "revision": revision - 1})
    assert stale["failed"] and "changed since revision" in stale["msg"] and stale["revision"] == revision, stale
    assert asyncio.run(_kv(url, "config", "rollout.batch_size"))[1][0] == "20"
    cas = module_task("kv", {"bucket": "config", "name": "rollout.batch_size", "value": "30", "revision": revision})
    assert cas["changed"] and cas["entry"]["revision"] > revision
    # the same task again: the value is already there, so no change (and no failure on the old revision)
    assert not module_task("kv", {"bucket": "config", "name": "rollout.batch_size", "value": "30", "revision": revision})["changed"]
    # revision 0: create only
    exists = module_task("kv", {"bucket": "config", "name": "rollout.batch_size", "value": "40", "revision": 0})
    assert exists["failed"] and asyncio.run(_kv(url, "config", "rollout.batch_size"))[1][0] == "30"
    assert module_task("kv", {"bucket": "config", "name": "owner", "value": "ops", "revision": 0})["changed"]

    # the lookup: values, JSON, details, defaults, and a clear error for a missing key
    out = local_play([{"ansible.builtin.debug": {"msg": {
        "one": "{{ lookup('natsops.fleet.kv', 'rollout.batch_size', bucket='config', servers='%s') }}" % url,
        "json": "{{ lookup('natsops.fleet.kv', 'maintenance', bucket='config', json=true, servers='%s') }}" % url,
        "many": "{{ query('natsops.fleet.kv', 'owner', 'rollout.batch_size', bucket='config', servers='%s') }}" % url,
        "details": "{{ lookup('natsops.fleet.kv', 'owner', bucket='config', details=true, servers='%s') }}" % url,
        "missing": "{{ lookup('natsops.fleet.kv', 'nope', bucket='config', default='unset', servers='%s') }}" % url,
    }}, "register": "shown"}, {"ansible.builtin.copy": {"content": "{{ shown.msg | to_json }}", "dest": str(tmp_path / "shown.json")}}])
    assert out.returncode == 0, out.stdout[-3000:]
    shown = json.loads((tmp_path / "shown.json").read_text())
    assert shown["one"] == "30" and shown["json"] == {"enabled": True, "until": "06:00"}
    assert shown["many"] == ["ops", "30"] and shown["missing"] == "unset"
    assert shown["details"]["value"] == "ops" and shown["details"]["revision"] > 0
    missing = local_play([{"ansible.builtin.debug": {"msg": "{{ lookup('natsops.fleet.kv', 'nope', bucket='config', servers='%s') }}" % url}}])
    assert missing.returncode != 0 and "key nope of bucket config does not exist" in missing.stdout

    # deletion: a delete marker (history kept), then purge (history gone); both idempotent
    four_steps("kv", {"bucket": "config", "name": "rollout.batch_size", "state": "absent"})
    assert asyncio.run(_kv(url, "config", "rollout.batch_size"))[1] is None
    assert len(asyncio.run(_history(url, "config", "rollout.batch_size"))) > 1
    four_steps("kv", {"bucket": "config", "name": "rollout.batch_size", "state": "absent", "purge": True})
    assert len(asyncio.run(_history(url, "config", "rollout.batch_size"))) <= 1  # the purge marker alone
    # a deleted key can be set again
    assert module_task("kv", {"bucket": "config", "name": "rollout.batch_size", "value": "5", "revision": 0})["changed"]
    module_task("kv", {"bucket": "config", "state": "absent"})


def test_bad_input_fails_clearly(module_task):
    bad = module_task("kv", {"bucket": "no.dots"})
    assert bad["failed"] and "bucket name" in bad["msg"]
    bad = module_task("kv", {"bucket": "b1", "name": "x", "history": 2, "value": "1"})
    assert bad["failed"] and "history are bucket settings" in bad["msg"]
    bad = module_task("kv", {"bucket": "b1", "value": "1"})
    assert bad["failed"] and "need a name" in bad["msg"]
    bad = module_task("kv", {"bucket": "b1", "name": ".x", "value": "1"})
    assert bad["failed"] and "key '.x' is invalid" in bad["msg"]
    bad = module_task("kv", {"bucket": "b1", "name": "x"})
    assert bad["failed"] and "needs value or json" in bad["msg"]
    bad = module_task("kv", {"bucket": "b1", "history": 65})
    assert bad["failed"] and "between 1 and 64" in bad["msg"]
    missing = module_task("kv", {"bucket": "never", "name": "x", "value": "1"})
    assert missing["failed"] and "bucket never does not exist" in missing["msg"]


def test_check_mode_on_a_bucket_the_play_creates(module_task, local_play, nats_server, tmp_path):
    """--check on a fresh server: a key of a bucket an earlier task would create reports changed with its diff and a
    warning instead of failing (issue 19); the lookup's default covers the missing bucket."""
    checked = module_task("kv", {"bucket": "fresh", "name": "x", "value": "1"}, check=True, diff=True)
    assert checked["changed"] and not checked.get("failed") and checked["diff"] == {"before": "", "after": "1\n"}, checked
    assert any("bucket fresh does not exist (yet)" in w for w in checked.get("warnings", [])), checked
    assert checked["entry"] == {"bucket": "fresh", "key": "x", "value": "1", "revision": 0}
    assert not module_task("kv", {"bucket": "fresh", "name": "x", "state": "absent"}, check=True)["changed"]
    assert asyncio.run(_kv(nats_server.url, "fresh")) == (None, None)
    out = local_play([{"ansible.builtin.copy": {"dest": str(tmp_path / "default.json"), "content": "{{ lookup('natsops.fleet.kv', "
                       "'x', bucket='fresh', details=true, default={'revision': 0}, servers='%s') | to_json }}" % nats_server.url}}])
    assert out.returncode == 0 and json.loads((tmp_path / "default.json").read_text()) == {"revision": 0}, out.stdout[-3000:]
