#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: object
short_description: Manage JetStream object store buckets and objects
description:
  - Without O(name), creates, updates or deletes an object store bucket so that it has the settings given.
  - With O(name), puts a file or text into the bucket as that object, fetches the object to a file, or deletes it.
    Contents are compared by their SHA-256 digest, so an object or file that already has them is not written again.
  - In check mode a bucket that does not exist yet (an earlier task of the play creates it) counts as an empty
    bucket, and an object to fetch that does not exist yet counts as one an earlier task puts; the task reports the
    change and warns. Without check mode both must exist.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.bucket
  - natsops.fleet.storage
  - natsops.fleet.attributes
  - ansible.builtin.files
options:
  state:
    description:
      - Without O(name), V(present) creates or updates the bucket and V(absent) deletes it with every object.
      - With O(name), V(present) puts O(src) or O(content) (or fetches to O(dest)) and V(absent) deletes the object.
    type: str
    choices: [present, absent]
    default: present
  name:
    description: The object's name in the bucket (any text, for example a file name or a path).
    type: str
  src:
    description: File to upload, on the host the module runs on.
    type: path
  content:
    description: Text to upload as the object.
    type: str
  dest:
    description:
      - File to write the object to, on the host the module runs on. It is replaced atomically, and only when its
        digest differs; the object's digest is verified before the file is replaced.
      - The file attributes (O(mode), O(owner), ...) apply to it.
    type: path
attributes:
  diff_mode:
    support: partial
    description: Shows the bucket settings (by option name, O(ttl) and O(max_bytes) in the units given), or the
      object's digest and size, before and after.
"""

EXAMPLES = r"""
- name: A bucket for probe packages, kept on three servers
  natsops.fleet.object:
    bucket: natsops_artifacts
    description: probe packages
    replicas: 3
  delegate_to: localhost

- name: Publish a package once (a second run compares digests and uploads nothing)
  natsops.fleet.object:
    bucket: natsops_artifacts
    name: natsops-probe-0.1.0-linux-amd64.tar.gz
    src: dist/natsops-probe-0.1.0-linux-amd64.tar.gz
  delegate_to: localhost

- name: Fetch it
  natsops.fleet.object:
    bucket: natsops_artifacts
    name: natsops-probe-0.1.0-linux-amd64.tar.gz
    dest: /var/cache/natsops/probe.tar.gz
    mode: "0644"

- name: Remove an older one
  natsops.fleet.object:
    bucket: natsops_artifacts
    name: natsops-probe-0.0.9-linux-amd64.tar.gz
    state: absent
"""

RETURN = r"""
bucket:
  description: The bucket's settings after the task (the stream's configuration; durations in nanoseconds); empty when absent.
  returned: without O(name)
  type: dict
  sample: {"name": "OBJ_natsops_artifacts", "num_replicas": 3}
changed_settings:
  description: The bucket settings the task changed (or would change), by option name.
  returned: without O(name)
  type: list
  elements: str
  sample: [replicas]
object:
  description: The object after the task; empty when it does not exist.
  returned: with O(name)
  type: dict
  sample: {"bucket": "natsops_artifacts", "name": "probe.tar.gz", "size": 5123456, "chunks": 41,
           "digest": "SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=", "sha256": "e3b0c442...b855"}
"""

import os
import tempfile
from typing import Any, Dict, Optional

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._common import argument_spec
from ansible_collections.natsops.fleet.plugins.module_utils._resources import (
    BUCKET_FIELDS, Outcome, ResourceError, bucket_options, bucket_settings, bucket_view, check_bucket_task, ensure_bucket,
    ensure_resource,
)
from ansible_collections.natsops.fleet.plugins.module_utils.wire.contract import object_digest_hex, sha256_hex, sha256_of

_OBJECT_ONLY = ("src", "content", "dest")


def _sha256_of_file(path: str) -> str:
    with open(path, "rb") as handle:
        return sha256_of(handle)


def _described(bucket: str, info: Any) -> Dict[str, Any]:
    if info is None:
        return {}
    return {"bucket": bucket, "name": info.name, "size": info.size, "chunks": info.chunks, "digest": info.digest,
            "sha256": object_digest_hex(info.digest)}


async def _info(store: Any, name: str) -> Optional[Any]:
    import nats.js.errors  # pylint: disable=import-outside-toplevel
    try:
        return await store.get_info(name)
    except nats.js.errors.ObjectNotFoundError:
        return None


async def ensure_object(module: AnsibleModule, nc: Any, params: Dict[str, Any]) -> Outcome:
    """Put, fetch or delete the object; returns (changed, result, diff)."""
    import nats.js.errors  # pylint: disable=import-outside-toplevel
    bucket, name = params["bucket"], params["name"]
    try:
        store = await nc.jetstream().object_store(bucket)
    except nats.js.errors.BucketNotFoundError as exc:
        if not module.check_mode:
            raise ResourceError("object store bucket %s does not exist; create it first (natsops.fleet.object with bucket: %s "
                                "and no name)" % (bucket, bucket)) from exc
        store = None  # an earlier task of the play may create it: shown as an empty bucket
        module.warn("object store bucket %s does not exist (yet): check mode shows object %s as in a new, empty bucket; "
                    "without --check the task fails unless an earlier task creates the bucket" % (bucket, name))
    info = await _info(store, name) if store is not None else None
    before = _described(bucket, info)
    diff_before = {k: before[k] for k in ("sha256", "size")} if info else {}
    if params["state"] == "absent":
        if info is not None and not module.check_mode:
            await store.delete(name)
        return info is not None, {"object": {}}, {"before": diff_before, "after": {}}
    if params["dest"]:
        if info is None and module.check_mode:
            if store is not None:
                module.warn("object %s does not exist in bucket %s (yet): check mode assumes an earlier task puts it; "
                            "without --check the task fails unless one does" % (name, bucket))
            current = _sha256_of_file(params["dest"]) if os.path.isfile(params["dest"]) else None
            diff = {"before": {"sha256": current, "size": os.path.getsize(params["dest"])} if current else {},
                    "after": {"bucket": bucket, "name": name}}
            return True, {"object": {}, "dest": params["dest"]}, diff
        if info is None:
            raise ResourceError("object %s does not exist in bucket %s" % (name, bucket))
        return await _fetch(module, store, info, before)
    if params["src"] is not None:
        wanted, size = _sha256_of_file(params["src"]), os.path.getsize(params["src"])
    else:
        data = params["content"].encode("utf-8")
        wanted, size = sha256_hex(data), len(data)
    if info is not None and before["sha256"] == wanted:
        return False, {"object": before}, {"before": diff_before, "after": diff_before}
    after = {"sha256": wanted, "size": size}
    if module.check_mode:
        return True, {"object": dict(before, bucket=bucket, name=name, **after)}, {"before": diff_before, "after": after}
    if params["src"] is not None:
        with open(params["src"], "rb") as handle:
            put = await store.put(name, handle)
    else:
        put = await store.put(name, data)
    if object_digest_hex(put.digest) != wanted:
        raise ResourceError("object %s of bucket %s was stored with digest %s, not the SHA-256 of the source" % (name, bucket, put.digest))
    return True, {"object": _described(bucket, put)}, {"before": diff_before, "after": after}


async def _fetch(module: AnsibleModule, store: Any, info: Any, described: Dict[str, Any]) -> Outcome:
    """Write the object to dest when the file's digest differs; verified before the file is replaced."""
    dest = module.params["dest"]
    current = _sha256_of_file(dest) if os.path.isfile(dest) else None
    diff = {"before": {"sha256": current, "size": os.path.getsize(dest)} if current else {},
            "after": {"sha256": described["sha256"], "size": info.size}}
    if current == described["sha256"]:
        return False, {"object": described, "dest": dest}, diff
    if module.check_mode:
        return True, {"object": described, "dest": dest}, diff
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        raise ResourceError("dest %s: directory %s does not exist" % (dest, directory))
    handle, temp = tempfile.mkstemp(prefix=".natsops-object-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            await store.get(info.name, writeinto=out)
        if _sha256_of_file(temp) != described["sha256"]:
            raise ResourceError("object %s arrived with another digest than its metadata says; dest %s was left as it was" % (info.name, dest))
        module.atomic_move(temp, dest)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return True, {"object": described, "dest": dest}, diff


async def ensure(module: AnsibleModule, nc: Any) -> Outcome:
    """The bucket, or the object when a name is given; returns (changed, result, diff)."""
    params = module.params
    if params["name"] is not None:
        changed, result, diff = await ensure_object(module, nc, params)
        if params["dest"] and os.path.exists(params["dest"]):  # mode, owner, ... of the fetched file
            changed = module.set_fs_attributes_if_different(module.load_file_common_arguments(params, path=params["dest"]), changed)
        return changed, result, diff
    from nats.js.api import ObjectStoreConfig  # pylint: disable=import-outside-toplevel
    js = nc.jetstream()
    bucket = params["bucket"]

    async def create(settings: Dict[str, Any]) -> None:
        await js.create_object_store(bucket, config=ObjectStoreConfig(bucket=bucket, **settings))

    return await ensure_bucket(js, "OBJ_%s" % bucket, bucket, bucket_settings(params), module.check_mode, create,
                               lambda: js.delete_object_store(bucket), params["state"] == "absent", bucket_view(params))


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(**bucket_options(name=dict(type="str"), src=dict(type="path"), content=dict(type="str"),
                                                     dest=dict(type="path"))),
        mutually_exclusive=[("src", "content", "dest")],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    params = module.params
    check_bucket_task(module, BUCKET_FIELDS, _OBJECT_ONLY, "object")
    if params["name"] is not None:
        if params["state"] == "present" and not any(params[o] is not None for o in _OBJECT_ONLY):
            module.fail_json(msg="state present with a name (object) needs src, content or dest")
        if params["src"] is not None and not os.path.isfile(params["src"]):
            module.fail_json(msg="src %s is not a readable file" % params["src"])
    ensure_resource(module, lambda nc: ensure(module, nc))


if __name__ == "__main__":
    main()
