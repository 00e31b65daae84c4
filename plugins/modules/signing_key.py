#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: signing_key
short_description: An NKey seed file to sign with, and its public key
description:
  - Makes sure an NKey seed file exists at O(path) and returns its public key, never the seed. Callers sign their
    requests with such a key and executors sign their replies with one (docs/protocol.md, "Signatures"); the
    public key is what executors trust (C(trusted_signers)) and what callers pin (C(known_executors)).
  - A missing file is created with a new user seed (C(S...)), mode C(0600) unless O(mode) says otherwise. Its
    directory is created with mode C(0700) when it is missing.
  - An existing file is never overwritten. It may be a seed file, an C(.nk) file (as C(nk) or C(nsc) write them)
    or a JWT C(.creds) file, whose user seed is used; the module reads its public key. A file that holds no
    seed fails the task and is left as it is.
  - O(state=absent) removes the file. To rotate a key, create the new one at another path, trust both keys while
    callers switch to the new one, then remove the old one (docs/security.md).
  - Unlike the other modules of this collection it needs no NATS connection, so it is not part of the action
    group C(natsops.fleet.nats).
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - ansible.builtin.files
  - natsops.fleet.attributes
options:
  path:
    description: The seed file, on the host where the module runs.
    type: path
    required: true
  state:
    description: V(present) makes sure the file holds a seed (created when missing); V(absent) removes the file.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    description: Reports whether the file would be created, removed or have its mode or owner changed, and changes
      nothing. The public key of a file that does not exist yet is not known in check mode.
  diff_mode:
    description: Shows whether the file exists, its public key (never the seed), mode and owner, before and after.
requirements:
  - nkeys (and PyNaCl, which it depends on) in the Python that runs the module
notes:
  - The P(natsops.fleet.executor#role) role uses this module on the controller (the key callers sign with) and on
    each executor host (the key the executor signs its replies with, with the executor's own Python).
"""

EXAMPLES = r"""
- name: The controller's signing key (the connection plugin signs with it when nothing else is set)
  natsops.fleet.signing_key:
    path: ~/.config/natsops/signing.nk
  delegate_to: localhost
  become: false
  run_once: true
  register: controller_key

- name: An executor's reply key, readable by its service account only
  natsops.fleet.signing_key:
    path: /etc/natsops/signing.nk
    owner: natsops
    group: natsops
    mode: "0600"
  vars:
    ansible_python_interpreter: /opt/natsops-executor/bin/python  # has nkeys

- name: The public key of the seed in a JWT credentials file (read only; the file is not changed)
  natsops.fleet.signing_key:
    path: ~/.nats/creds/natsops/FLEET/controller.creds
  delegate_to: localhost
  register: creds_key

- name: Trust it on an executor
  ansible.builtin.debug:
    msg: "natsops-executor --trusted-signer {{ creds_key.public_key }}"
"""

RETURN = r"""
public_key:
  description: The NKey public key (C(U...)) of the seed in the file. Never the seed.
  returned: when the file holds a key (not in check mode for a file that does not exist yet, nor with O(state=absent))
  type: str
  sample: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4
path:
  description: The file.
  returned: always
  type: str
  sample: /etc/natsops/signing.nk
"""

import errno
import os
import tempfile
import traceback
from typing import Any, Dict, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.natsops.fleet.plugins.module_utils.wire.signing import SigningError, SigningKey, generate_seed

NEW_FILE_MODE = 0o600
NEW_DIRECTORY_MODE = 0o700


class KeyFileError(Exception):
    """The file cannot be used as a signing key (the message names the file, never the seed)."""


def read_public_key(path: str) -> str:
    """The public key of the first NKey seed in ``path`` (seed file, .nk or .creds)."""
    if not os.path.isfile(path):
        raise KeyFileError("%s exists but is not a regular file; it is left as it is" % path)
    try:
        return SigningKey.from_file(path).public_key
    except SigningError as exc:
        raise KeyFileError("%s; it is never overwritten: remove it (state: absent) or point path elsewhere" % exc) from None


def create_key_file(path: str) -> Tuple[str, bool]:
    """Write a new seed to ``path`` (mode 0600, missing directories 0700) unless a file appears there first.
    Returns (public key, created): another writer's key with created=False when it won the race."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, NEW_DIRECTORY_MODE)
    seed = generate_seed()
    public_key = SigningKey(seed, path).public_key
    # written to a temp file (mkstemp: mode 0600), then linked into place: the link fails when the path exists,
    # so nothing is ever overwritten and nobody sees a half-written seed
    handle, temp = tempfile.mkstemp(dir=directory, prefix=".signing-key-", suffix=".tmp")
    try:
        _write_and_close(handle, seed + b"\n")
        try:
            os.link(temp, path)
        except FileExistsError:
            return read_public_key(path), False
        except OSError as exc:  # a file system without hard links: exclusive create instead
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            try:
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), NEW_FILE_MODE)
            except FileExistsError:
                return read_public_key(path), False
            _write_and_close(target, seed + b"\n")
    finally:
        os.unlink(temp)
    return public_key, True


def _write_and_close(handle: int, data: bytes) -> None:
    """Write ``data`` to an open file descriptor, flush it to disk and close it."""
    try:
        os.write(handle, data)
        os.fsync(handle)
    finally:
        os.close(handle)


def _state_of(path: str, public_key: Optional[str]) -> Dict[str, Any]:
    state: Dict[str, Any] = {"path": path, "state": "present" if public_key is not None else "absent"}
    if public_key is not None:
        state["public_key"] = public_key
    return state


def ensure_absent(module: AnsibleModule, path: str) -> None:
    if not os.path.lexists(path):
        module.exit_json(changed=False, path=path, diff={"before": _state_of(path, None), "after": _state_of(path, None)})
    if os.path.isdir(path) and not os.path.islink(path):
        module.fail_json(msg="%s is a directory, not a signing key; it is left as it is" % path, path=path)
    try:
        before = _state_of(path, read_public_key(path))
    except KeyFileError:
        before = {"path": path, "state": "present"}
    if not module.check_mode:
        try:
            os.unlink(path)
        except OSError as exc:
            module.fail_json(msg="cannot remove %s: %s" % (path, to_native(exc.strerror or exc)), path=path)
    module.exit_json(changed=True, path=path, diff={"before": before, "after": _state_of(path, None)})


def ensure_present(module: AnsibleModule, path: str) -> None:
    created = not os.path.lexists(path)
    public_key: Optional[str] = None
    try:
        if not created:
            public_key = read_public_key(path)
        elif not module.check_mode:
            public_key, created = create_key_file(path)
    except KeyFileError as exc:
        module.fail_json(msg=str(exc), path=path)
    except SigningError as exc:  # nkeys missing, or a seed it cannot use
        module.fail_json(msg=str(exc), path=path)
    except OSError as exc:
        module.fail_json(msg="cannot create the signing key %s: %s" % (path, to_native(exc.strerror or exc)), path=path)
    diff: Dict[str, Any] = {"before": _state_of(path, None if created else public_key),
                            "after": dict(_state_of(path, public_key), state="present")}
    file_args = module.load_file_common_arguments(module.params)
    if created and file_args.get("mode") is None:
        file_args["mode"] = "0600"
    if created and module.check_mode:
        # nothing to set attributes on yet: report what the real run would apply
        diff["after"].update({k: file_args[k] for k in ("mode", "owner", "group") if file_args.get(k) is not None})
        module.exit_json(changed=True, path=path, diff=diff)
    changed = module.set_fs_attributes_if_different(file_args, created, diff=diff)
    module.exit_json(changed=changed, path=path, public_key=public_key, diff=diff)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path = module.params["path"]
    if module.params["state"] == "absent":
        ensure_absent(module, path)
    try:
        import nkeys  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        module.fail_json(msg=missing_required_lib("nkeys"), exception=traceback.format_exc())
    ensure_present(module, path)


if __name__ == "__main__":
    main()
