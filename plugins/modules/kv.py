#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kv
short_description: Manage JetStream key-value buckets and their keys
description:
  - Without O(name), creates, updates or deletes a key-value bucket so that it has the settings given.
  - With O(name), sets or deletes one key of an existing bucket. A key that already holds the value is left
    alone, so the task is idempotent; O(revision) makes the change a compare-and-set.
  - In check mode a bucket that does not exist yet (an earlier task of the play creates it) counts as an empty
    bucket; the task reports the key it would set and warns. Without check mode the bucket must exist.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.bucket
  - natsops.fleet.storage
  - natsops.fleet.attributes
options:
  state:
    description:
      - Without O(name), V(present) creates or updates the bucket and V(absent) deletes it with every key.
      - With O(name), V(present) sets the key to O(value) or O(json) and V(absent) deletes the key.
    type: str
    choices: [present, absent]
    default: present
  history:
    description: Values kept per key (1 to 64). A bucket setting, only without O(name).
    type: int
  max_value_size:
    description: Largest value accepted, in bytes (-1 unlimited). A bucket setting, only without O(name).
    type: int
  name:
    description:
      - The key to manage (letters, digits and C(-/_=.), not starting or ending with C(.)).
      - Called O(name) because O(key) is the client TLS key of the NATS connection.
    type: str
  value:
    description: The key's value as text (with O(name) and O(state=present)).
    type: str
  json:
    description: The key's value as data, stored as compact JSON with sorted keys (with O(name) and O(state=present)).
    type: raw
  revision:
    description:
      - Compare-and-set. The key is changed only if its current revision is this one; V(0) means only if the key
        does not exist (or is deleted). Otherwise the task fails, changes nothing and returns the current revision.
      - A key that already holds the wanted value (or is already deleted) is not changed, whatever its revision.
    type: int
  purge:
    description: With O(name) and O(state=absent), also remove the key's earlier values instead of leaving them in its history.
    type: bool
    default: false
attributes:
  diff_mode:
    description: Shows the bucket settings (by option name, O(ttl) and O(max_bytes) in the units given) or the key's
      value before and after.
"""

EXAMPLES = r"""
- name: The probe registry, entries expiring after 5 minutes without heartbeat, on three servers
  natsops.fleet.kv:
    bucket: natsops_registry
    ttl: 5m
    history: 1
    replicas: 3
  delegate_to: localhost

- name: A bucket for settings, five values kept per key
  natsops.fleet.kv:
    bucket: config
    history: 5

- name: A setting the executors read
  natsops.fleet.kv:
    bucket: config
    name: rollout.batch_size
    value: "20"

- name: A structured value, replaced only if nobody changed it since we read it
  natsops.fleet.kv:
    bucket: config
    name: maintenance
    json: {enabled: true, until: "2026-12-01T06:00:00Z"}
    revision: "{{ lookup('natsops.fleet.kv', 'maintenance', bucket='config', details=true, default={'revision': 0}).revision }}"

- name: Forget a key and its history
  natsops.fleet.kv:
    bucket: config
    name: maintenance_2025
    state: absent
    purge: true
"""

RETURN = r"""
bucket:
  description: The bucket's settings after the task (the stream's configuration; durations in nanoseconds); empty when absent.
  returned: without O(name)
  type: dict
  sample: {"name": "KV_config", "max_msgs_per_subject": 1, "max_age": 300000000000, "num_replicas": 3}
changed_settings:
  description: The bucket settings the task changed (or would change), by option name.
  returned: without O(name)
  type: list
  elements: str
  sample: [ttl, history]
entry:
  description: The key after the task; C(value) is absent when the key does not exist or is deleted.
  returned: with O(name)
  type: dict
  sample: {"bucket": "config", "key": "rollout.batch_size", "value": "20", "revision": 7}
"""

import json
import re
from typing import Any, Dict, List, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._common import argument_spec
from ansible_collections.natsops.fleet.plugins.module_utils._resources import (
    BUCKET_FIELDS, Outcome, ResourceError, bucket_options, bucket_settings, bucket_view, check_bucket_task, ensure_bucket,
    ensure_resource,
)

_KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
_FIELDS = dict(BUCKET_FIELDS, history="max_msgs_per_subject", max_value_size="max_msg_size")
_KEY_ONLY = ("value", "json", "revision", "purge")


def _wanted_value(params: Dict[str, Any]) -> bytes:
    if params["json"] is not None:
        return json.dumps(params["json"], ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return (params["value"] or "").encode("utf-8")


async def _current(kv: Any, key: str) -> Tuple[Optional[bytes], int]:
    """(value bytes or None when missing/deleted, revision of the last entry or 0)."""
    import nats.js.errors  # pylint: disable=import-outside-toplevel
    try:
        entry = await kv.get(key)
        return entry.value or b"", entry.revision
    except nats.js.errors.KeyNotFoundError as exc:
        return None, exc.entry.revision if exc.entry is not None else 0


async def _history_left(js: Any, stream: str, subject: str) -> bool:
    """True when the subject still has messages other than a purge marker."""
    import nats.js.errors  # pylint: disable=import-outside-toplevel
    try:
        msg = await js.get_last_msg(stream, subject)
    except nats.js.errors.NotFoundError:
        return False
    return (msg.headers or {}).get("KV-Operation") != "PURGE"


def _entry(bucket: str, key: str, value: Optional[bytes], revision: int) -> Dict[str, Any]:
    entry = {"bucket": bucket, "key": key, "revision": revision}
    if value is not None:
        entry["value"] = value.decode("utf-8", "replace")
    return entry


async def ensure_key(nc: Any, params: Dict[str, Any], check_mode: bool) -> Outcome:
    """Set or delete the key; returns (changed, result, diff)."""
    import nats.js.errors  # pylint: disable=import-outside-toplevel
    js = nc.jetstream()
    bucket, key, revision = params["bucket"], params["name"], params["revision"]
    warnings: List[str] = []
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError as exc:
        if not check_mode:
            raise ResourceError("key-value bucket %s does not exist; create it first (natsops.fleet.kv with bucket: %s and no "
                                "name)" % (bucket, bucket)) from exc
        kv = None  # an earlier task of the play may create it: shown as an empty bucket
        warnings.append("key-value bucket %s does not exist (yet): check mode shows key %s as in a new, empty bucket; "
                        "without --check the task fails unless an earlier task creates the bucket" % (bucket, key))
    value, current = await _current(kv, key) if kv is not None else (None, 0)
    shown = (value or b"").decode("utf-8", "replace")
    if params["state"] == "absent":
        wanted = None
        changed = value is not None or (params["purge"] and await _history_left(js, "KV_%s" % bucket, "$KV.%s.%s" % (bucket, key)))
    else:
        wanted = _wanted_value(params)
        changed = value != wanted
    diff = {"before": shown + "\n" if value is not None else "", "after": wanted.decode("utf-8", "replace") + "\n" if wanted is not None else ""}
    if not changed:
        return False, {"entry": _entry(bucket, key, value, current), "warnings": warnings}, diff
    if revision is not None and revision != (current if value is not None else 0) and not (revision == current and value is None):
        raise ResourceError("key %s of bucket %s changed since revision %d: it is at revision %d now; nothing was written" % (
            key, bucket, revision, current), revision=current)
    if check_mode:
        return True, {"entry": _entry(bucket, key, wanted, current), "warnings": warnings}, diff
    try:
        if wanted is None and params["purge"]:
            await kv.purge(key)
        elif wanted is None:
            await kv.delete(key, last=revision or None)
        elif revision == 0 or (revision is not None and value is None):
            current = await kv.create(key, wanted)
        elif revision is not None:
            current = await kv.update(key, wanted, last=revision)
        else:
            current = await kv.put(key, wanted)
    except nats.js.errors.KeyWrongLastSequenceError as exc:
        raise ResourceError("key %s of bucket %s changed while the task ran (expected revision %s); nothing was written" % (
            key, bucket, revision), revision=(await _current(kv, key))[1]) from exc
    if wanted is None:
        current = (await _current(kv, key))[1]
    return True, {"entry": _entry(bucket, key, wanted, current)}, diff


async def ensure(nc: Any, params: Dict[str, Any], check_mode: bool) -> Outcome:
    """The bucket, or the key when one is given; returns (changed, result, diff)."""
    if params["name"] is not None:
        return await ensure_key(nc, params, check_mode)
    from nats.js.api import KeyValueConfig  # pylint: disable=import-outside-toplevel
    js = nc.jetstream()
    bucket = params["bucket"]

    async def create(settings: Dict[str, Any]) -> None:
        await js.create_key_value(KeyValueConfig(bucket=bucket, history=params["history"] or 1,
                                                 max_value_size=params["max_value_size"], **settings))

    return await ensure_bucket(js, "KV_%s" % bucket, bucket, bucket_settings(params, _FIELDS), check_mode, create,
                               lambda: js.delete_key_value(bucket), params["state"] == "absent", bucket_view(params, _FIELDS))


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(**bucket_options(
            history=dict(type="int"), max_value_size=dict(type="int"), name=dict(type="str"),
            value=dict(type="str"), json=dict(type="raw"), revision=dict(type="int"), purge=dict(type="bool", default=False),
        )),
        mutually_exclusive=[("value", "json")],
        supports_check_mode=True,
    )
    params = module.params
    check_bucket_task(module, _FIELDS, _KEY_ONLY, "key")
    if params["name"] is None:
        if params["history"] is not None and not 1 <= params["history"] <= 64:
            module.fail_json(msg="option history: %d is not between 1 and 64" % params["history"])
    else:
        key = params["name"]
        if not _KEY_RE.match(key) or key.startswith(".") or key.endswith("."):
            module.fail_json(msg="key %r is invalid: letters, digits and -/_=. only, not starting or ending with '.'" % key)
        if params["state"] == "present" and params["value"] is None and params["json"] is None:
            module.fail_json(msg="state present with a name (key) needs value or json")
    ensure_resource(module, lambda nc: ensure(nc, params, module.check_mode))


if __name__ == "__main__":
    main()
