#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: executor_transfer
short_description: Put a file into the JetStream Object Store once and have executors place it on hosts
description:
  - With O(src), the controller's file is put into the JetStream Object Store (bucket O(bucket)) unless an
    object of that name already holds the same content; then the executor(s) serving O(executor) place it at
    O(dest), on their own host or, with O(target), on a host they reach over SSH. Looping over many hosts
    uploads the file once.
  - With O(object), an object already in the store is placed (for example one uploaded by BK-Lite).
  - With O(remote_src), a file of the executor's own host is copied to O(dest) on O(target).
  - Checksum-idempotent. The destination's SHA-256 (and mode, when O(mode) is set) is compared first, so nothing
    is fetched or written when it already matches. Content is verified against the object's digest and lands
    through a temp file and a rename, so the destination holds either the old file or the complete new one.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.trust.module
  - natsops.fleet.executor
options:
  src:
    description: A file on the controller. Exactly one of O(src), O(object) and O(remote_src).
    type: path
  object:
    description:
      - Name of the object in O(bucket). With O(src), the name it is stored under. The default name is
        C(sha256/<digest>), which is shared by every file with the same content.
      - Without O(src), an object that is already in the store.
    type: str
  remote_src:
    description: An absolute path to a file on the executor's own host, copied to O(dest) (on O(target)).
    type: str
  dest:
    description: Absolute path of the file to write. Its directory must exist.
    type: str
    required: true
  bucket:
    description:
      - The Object Store bucket. It is created with default settings when O(src) needs it and it is missing.
        Create it beforehand for replicas or limits.
      - Defaults to the value of O(namespace), dots replaced by C(_) (bucket names have no dots); C(bklite) with O(protocol=bklite).
    type: str
  mode:
    description:
      - Permissions of O(dest), as an octal string such as C('0644') or a number.
      - By default an existing file keeps its mode and a new one gets C(0644).
    type: raw
  protocol:
    description:
      - C(natsops) talks to C(natsops-executor) (the C(transfer) operation).
      - C(bklite) drives BK-Lite's own nats-executor, or a C(natsops-executor --bklite-compat). It uses
        C(download.local) without O(target), C(download.remote) with it, and C(upload.remote) for O(remote_src),
        which needs O(target). The checksum and mode of O(dest) are read and set with C(local.execute) or
        C(ssh.execute), so the module stays idempotent. O(target.identity) is not available. O(bucket)
        defaults to C(bklite).
    type: str
    choices: [natsops, bklite]
    default: natsops
  timeout:
    description: Seconds the executor may spend on one BK-Lite request (O(protocol=bklite)).
    type: int
    default: 600
attributes:
  check_mode:
    support: full
    description: Nothing is uploaded or written; the executor compares checksums and reports whether O(dest) would change.
  diff_mode:
    support: none
    description: No diff; RV(before) gives the previous checksum and mode.
seealso:
  - module: natsops.fleet.executor_command
  - module: natsops.fleet.executor_info
"""

EXAMPLES = r"""
- name: Ship the probe package to every zone host, uploading it once
  natsops.fleet.executor_transfer:
    executor: 管理网
    src: files/probe-1.4.2-linux-amd64.tar.gz
    dest: /opt/natsops/probe.tar.gz
    mode: "0640"
    target:
      host: "{{ ansible_host }}"
      user: root
      identity: default
  delegate_to: localhost

- name: Place an object already in the store on the executor's own host
  natsops.fleet.executor_transfer:
    executor: zone-a-executor
    bucket: bklite
    object: linux/x86_64/probe/1.4.2/probe.tar.gz
    dest: /srv/packages/probe.tar.gz
  delegate_to: localhost

- name: Copy a file of the executor host to a zone host
  natsops.fleet.executor_transfer:
    executor: 管理网
    remote_src: /etc/natsops/ca.pem
    dest: /etc/pki/natsops-ca.pem
    target:
      host: 10.20.0.11
      user: root
  delegate_to: localhost
"""

RETURN = r"""
dest:
  description: Where the file was placed.
  returned: always
  type: str
sha256:
  description: SHA-256 of the content.
  returned: always
  type: str
size:
  description: Size in bytes (unknown in check mode before the first upload).
  returned: when known
  type: int
bucket:
  description: The Object Store bucket used.
  returned: unless O(remote_src)
  type: str
object:
  description: The object name used.
  returned: unless O(remote_src)
  type: str
uploaded:
  description: Whether this task put the file into the Object Store.
  returned: always
  type: bool
before:
  description: Checksum and mode of O(dest) before the task, or null when it did not exist.
  returned: always
  type: dict
"""

import posixpath
import shlex
from typing import Any, Dict, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorError, ExecutorTaskError
from ansible_collections.natsops.fleet.plugins.module_utils.wire import bklite
from ansible_collections.natsops.fleet.plugins.module_utils.wire.contract import sha256_of
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import E_CHECKSUM_MISMATCH, default_bucket
from ansible_collections.natsops.fleet.plugins.module_utils._common import (
    TARGET_SPEC, TRUST_ARGUMENT_SPEC, argument_spec, bklite_failure, bklite_target, executor_client, target_of,
)


def _mode(module: AnsibleModule, value: Any) -> Optional[int]:
    if value is None:
        return None
    try:
        mode = int(value, 8) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        module.fail_json(msg="mode must be an octal string such as '0644' or a number, got %r" % (value,))
    if not 0 <= mode <= 0o7777:
        module.fail_json(msg="mode must be between 0 and 07777, got %r" % (value,))
    return mode


def _sha256(module: AnsibleModule, path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return sha256_of(handle)
    except OSError as exc:
        module.fail_json(msg="cannot read src %s: %s" % (path, exc.strerror or exc))


class _Bklite:
    """The transfer through BK-Lite's subjects: state read and mode set with an execute call."""

    def __init__(self, module: AnsibleModule, client: Any) -> None:
        self.module = module
        self.client = client
        self.target = bklite_target(module)
        self.timeout = module.params["timeout"]

    def _call(self, method: str, request: Dict[str, Any]) -> str:
        request["execute_timeout"] = self.timeout
        if method in bklite.SSH_METHODS:
            request.update(bklite.ssh_fields(self.target))
        reply = self.client.bklite_call(method, request, self.timeout + 1)
        if not reply.get("success"):
            raise bklite_failure(method, reply, keys=("stage", "category", "result"))
        return reply.get("result") or ""

    def sh(self, command: str, on_target: bool = True) -> str:
        if on_target and self.target:
            return self._call(bklite.SSH_EXECUTE, {"command": command})
        return self._call(bklite.LOCAL_EXECUTE, {"command": command})

    def state(self, path: str, on_target: bool = True) -> Optional[Tuple[str, int]]:
        """(sha256, mode) of a regular file, or None."""
        out = self.sh('f=%s; if [ -f "$f" ]; then sha256sum "$f" | cut -d" " -f1; stat -c %%a "$f"; fi'
                      % shlex.quote(path), on_target).split()
        return (out[0], int(out[1], 8)) if len(out) == 2 else None

    def place(self, dest: str, bucket: Optional[str] = None, object_name: Optional[str] = None,
              remote_src: Optional[str] = None) -> None:
        if remote_src is not None:
            self._call(bklite.UPLOAD_REMOTE, {"source_path": remote_src, "target_path": dest})
            return
        request = {"bucket_name": bucket, "file_key": object_name, "file_name": posixpath.basename(dest)}
        if self.target:
            request.update(target_path=dest, local_path="")
            self._call(bklite.DOWNLOAD_REMOTE, request)
        else:
            request["target_path"] = posixpath.dirname(dest)
            self._call(bklite.DOWNLOAD_LOCAL, request)

    def transfer(self, dest: str, digest: Optional[str], mode: Optional[int], check: bool, bucket: Optional[str] = None,
                 object_name: Optional[str] = None, remote_src: Optional[str] = None) -> Dict[str, Any]:
        if remote_src is not None:
            if not self.target:
                self.module.fail_json(msg="remote_src with protocol bklite needs a target (upload.remote)")
            source = self.state(remote_src, on_target=False)
            if source is None:
                self.module.fail_json(msg="remote_src %s is not a file on the executor host" % remote_src)
            digest = source[0]
        elif digest is None:
            digest = self.client.object_digest(bucket, object_name)
            if digest is None:
                self.module.fail_json(msg="object %r is not in the Object Store bucket %r" % (object_name, bucket))
        before = self.state(dest)
        changed = before is None or before[0] != digest or (mode is not None and before[1] != mode)
        if changed and not check:
            if before is None or before[0] != digest:
                self.place(dest, bucket, object_name, remote_src)
            self.sh("chmod %o %s" % (mode if mode is not None else (before[1] if before else 0o644), shlex.quote(dest)))
            after = self.state(dest)
            if after is None or after[0] != digest:
                raise ExecutorTaskError(E_CHECKSUM_MISMATCH, "%s does not hold the expected content after the transfer" % dest)
        return {"changed": changed, "sha256": digest, "before": {"sha256": before[0], "mode": before[1]} if before else None}


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            **TRUST_ARGUMENT_SPEC,
            executor={"type": "str", "required": True},
            executor_wait={"type": "float", "default": 30.0},
            src={"type": "path"},
            object={"type": "str"},
            remote_src={"type": "str"},
            dest={"type": "str", "required": True},
            bucket={"type": "str"},
            mode={"type": "raw"},
            protocol={"type": "str", "choices": ["natsops", "bklite"], "default": "natsops"},
            timeout={"type": "int", "default": 600},
            target={"type": "dict", "options": TARGET_SPEC},
        ),
        mutually_exclusive=[("src", "remote_src"), ("object", "remote_src")],
        required_one_of=[("src", "object", "remote_src")],
        supports_check_mode=True,
    )
    params = module.params
    dest = params["dest"]
    if not posixpath.isabs(dest):
        module.fail_json(msg="dest must be an absolute path, got %r" % dest)
    mode = _mode(module, params["mode"])
    bucket = params["bucket"] or (bklite.DEFAULT_BUCKET if params["protocol"] == "bklite" else default_bucket(params["namespace"]))
    result = {"changed": False, "dest": dest, "uploaded": False}
    digest = None
    object_name = params["object"]
    if params["src"]:
        digest = _sha256(module, params["src"])
        object_name = object_name or "sha256/%s" % digest
    if params["remote_src"] is None:
        result.update(bucket=bucket, object=object_name)

    client = executor_client(module, params["executor"], target_of(params))
    try:
        try:
            if params["src"] and not module.check_mode:
                result["uploaded"] = client.upload_object(bucket, object_name, params["src"], digest)
            if params["protocol"] == "bklite":
                placed = _Bklite(module, client).transfer(
                    dest, digest, mode, module.check_mode, bucket, object_name, params["remote_src"])
            elif params["remote_src"] is not None:
                placed = client.transfer(dest, source_path=params["remote_src"], mode=mode, check=module.check_mode)
            else:
                placed = client.transfer(dest, bucket=bucket, object_name=object_name, sha256=digest, mode=mode,
                                         check=module.check_mode)
        except ExecutorError as exc:
            module.fail_json(msg=exc.message, code=exc.code, details=exc.details, **result)
    finally:
        client.close()
    result.update(changed=placed["changed"], sha256=placed["sha256"], before=placed.get("before"))
    if placed.get("size") is not None:
        result["size"] = placed["size"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
