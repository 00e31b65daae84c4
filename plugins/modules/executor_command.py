#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: executor_command
short_description: Run a command through a natsops executor, on its host or on a host it reaches over SSH
description:
  - Sends one command to the executor(s) serving O(executor) and returns its exit code, stdout and stderr,
    separately and byte-exact (decoded as UTF-8 with replacement for the returned strings).
  - Without O(target) the command runs on the executor's own host; with O(target) a zone executor runs it on
    that host over SSH (host key checked against the executor's known_hosts).
  - No Ansible connection or module payload is involved, so it is the fastest way to run a command
    through NATS; use the C(natsops.fleet.nats) connection plugin for Ansible modules.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats
options:
  executor:
    description: Instance id of the executor(s) to address, for example a zone name such as C(管理网).
    type: str
    required: true
  cmd:
    description: The command, run by C(/bin/sh -c). Exactly one of O(cmd) and O(argv).
    type: str
  argv:
    description: The command as an argument vector (no shell). Exactly one of O(cmd) and O(argv).
    type: list
    elements: str
  chdir:
    description: Working directory (absolute).
    type: path
  env:
    description: Environment variables added for the command.
    type: dict
  stdin:
    description: Text sent to the command's standard input.
    type: str
  timeout:
    description: Seconds before the command's process group is killed and the task fails; C(0) means no limit.
    type: float
    default: 0
  creates:
    description: If this path exists where the command would run, the command is not run.
    type: path
  removes:
    description: If this path does not exist where the command would run, the command is not run.
    type: path
  target:
    description: SSH mode, the host the executor runs the command on.
    type: dict
    suboptions:
      host:
        description: Address or name of the host, as the executor resolves it.
        type: str
        required: true
      port:
        description: SSH port.
        type: int
        default: 22
      user:
        description: SSH login user.
        type: str
        required: true
      identity:
        description: Name of a private key configured on the executor (preferred, no secret travels).
        type: str
      password:
        description: Password of O(target.user), sent with the request (never logged).
        type: str
      private_key:
        description: A private key (PEM or OpenSSH text) sent with the request (never logged).
        type: str
      passphrase:
        description: Passphrase of O(target.private_key).
        type: str
attributes:
  action_group:
    description: Use C(group/natsops.fleet.nats) in C(module_defaults) to set the NATS connection options once.
    support: full
    membership:
      - natsops.fleet.nats
  check_mode:
    support: partial
    description: Can run in check mode and return changed status prediction without modifying target.
    details: The command is not run in check mode; O(creates) and O(removes) are still evaluated.
  diff_mode:
    support: none
    description: No diff.
seealso:
  - module: natsops.fleet.executor_info
"""

EXAMPLES = r"""
- name: Uptime of the zone executor's own host
  natsops.fleet.executor_command:
    servers: tls://nats.example.com:4222
    creds: /etc/natsops/controller.creds
    executor: 管理网
    cmd: uptime
  delegate_to: localhost

- name: Install a package on a zone host, once
  natsops.fleet.executor_command:
    executor: 管理网
    target:
      host: 10.20.0.11
      user: root
      identity: default
    cmd: apt-get install -y chrony
    creates: /usr/sbin/chronyd
  delegate_to: localhost
"""

RETURN = r"""
rc:
  description: Exit code of the command (255 when an SSH-mode command ended without one).
  returned: when the command ran
  type: int
stdout:
  description: Standard output.
  returned: always
  type: str
stderr:
  description: Standard error.
  returned: always
  type: str
stdout_lines:
  description: RV(stdout) split into lines.
  returned: always
  type: list
  elements: str
stderr_lines:
  description: RV(stderr) split into lines.
  returned: always
  type: list
  elements: str
cmd:
  description: The command as given.
  returned: always
  type: raw
delta:
  description: Wall time of the request.
  returned: when the command ran
  type: str
msg:
  description: Why the command did not run, or that it failed.
  returned: when skipped or failed
  type: str
"""

import datetime
import shlex

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils.errors import ExecutorError
from ansible_collections.natsops.fleet.plugins.module_utils.modules import argument_spec, executor_client

TARGET_SPEC = {
    "host": {"type": "str", "required": True},
    "port": {"type": "int", "default": 22},
    "user": {"type": "str", "required": True},
    "identity": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "private_key": {"type": "str", "no_log": True},
    "passphrase": {"type": "str", "no_log": True},
}


def _text(data):
    return data.decode("utf-8", "replace")


def _exists(client, path):
    rc = client.exec_command(argv=["test", "-e", path])[0]
    return rc == 0


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            executor={"type": "str", "required": True},
            cmd={"type": "str"},
            argv={"type": "list", "elements": "str"},
            chdir={"type": "path"},
            env={"type": "dict"},
            stdin={"type": "str"},
            timeout={"type": "float", "default": 0},
            creates={"type": "path"},
            removes={"type": "path"},
            target={"type": "dict", "options": TARGET_SPEC},
        ),
        mutually_exclusive=[("cmd", "argv")],
        required_one_of=[("cmd", "argv")],
        supports_check_mode=True,
    )
    params = module.params
    shown = params["cmd"] if params["cmd"] is not None else " ".join(shlex.quote(a) for a in params["argv"])
    result = {"changed": False, "cmd": params["cmd"] if params["cmd"] is not None else params["argv"],
              "stdout": "", "stderr": "", "stdout_lines": [], "stderr_lines": []}
    target = dict((k, v) for k, v in (params["target"] or {}).items() if v is not None) or None
    client = executor_client(module, params["executor"], target)
    try:
        try:
            if params["creates"] and _exists(client, params["creates"]):
                module.exit_json(msg="skipped, since %s exists" % params["creates"], **result)
            if params["removes"] and not _exists(client, params["removes"]):
                module.exit_json(msg="skipped, since %s does not exist" % params["removes"], **result)
            if module.check_mode:
                result.update(changed=True, msg="command would have run: %s" % shown)
                module.exit_json(**result)
            started = datetime.datetime.now()
            rc, out, err = client.exec_command(
                command=params["cmd"], argv=params["argv"], cwd=params["chdir"], env=params["env"],
                stdin=params["stdin"].encode("utf-8") if params["stdin"] is not None else None,
                timeout=params["timeout"])
            delta = datetime.datetime.now() - started
        except ExecutorError as exc:
            module.fail_json(msg=exc.message, code=exc.code, details=exc.details, **result)
    finally:
        client.close()
    result.update(changed=True, rc=rc, stdout=_text(out), stderr=_text(err), delta=str(delta))
    result["stdout_lines"] = result["stdout"].splitlines()
    result["stderr_lines"] = result["stderr"].splitlines()
    if rc != 0:
        module.fail_json(msg="non-zero return code", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
