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
  - natsops.fleet.nats.module
  - natsops.fleet.trust.module
  - natsops.fleet.executor
options:
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
  stream_topic:
    description:
      - Publish each output line, as it arrives, to this NATS subject, so that people and tools can follow a
        long command live (for example C(nats sub 'job.stream.>')).
      - Each line is a JSON object C({"execution_id", "stream", "line", "timestamp"}), the event format of
        BK-Lite's C(stream_log_topic). Empty lines are skipped.
    type: str
  execution_id:
    description: The C(execution_id) of the line events of O(stream_topic). Defaults to a new random id.
    type: str
  protocol:
    description:
      - C(natsops) talks to C(natsops-executor).
      - C(bklite) drives BK-Lite's own nats-executor, or a C(natsops-executor --bklite-compat), through the
        C(local.execute) and C(ssh.execute) subjects. That protocol returns stdout and stderr merged (RV(stdout),
        with RV(stderr) empty), cut at 1 MiB, and has no stdin. O(target.identity) is not available, and
        O(timeout=0) becomes 3600 seconds because BK-Lite needs a limit.
    type: str
    choices: [natsops, bklite]
    default: natsops
attributes:
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
execution_id:
  description: The id of the line events published to O(stream_topic).
  returned: when O(stream_topic) is set
  type: str
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
import math
import shlex
import uuid
from typing import Any, List, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorError
from ansible_collections.natsops.fleet.plugins.module_utils.wire import bklite
from ansible_collections.natsops.fleet.plugins.module_utils._common import (
    TARGET_SPEC, TRUST_ARGUMENT_SPEC, argument_spec, bklite_failure, bklite_target, executor_client, target_of,
)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class _Runner:
    """Runs commands through the executor in the module's protocol; run() gives (rc, stdout, stderr) bytes."""

    def __init__(self, module: AnsibleModule, client: Any) -> None:
        self.module = module
        self.client = client
        self.params = module.params
        self.target = target_of(self.params)
        if self.params["protocol"] == "bklite":
            if self.params["stdin"] is not None:
                module.fail_json(msg="protocol bklite has no stdin; use protocol natsops")
            self.target = bklite_target(module)

    def run(self, command: Optional[str] = None, argv: Optional[List[str]] = None,
            events: Optional[bklite.LineEvents] = None) -> Tuple[int, bytes, bytes]:
        params = self.params
        if params["protocol"] == "natsops":
            return self.client.exec_command(
                command=command, argv=argv, cwd=params["chdir"], env=params["env"],
                stdin=params["stdin"].encode("utf-8") if params["stdin"] is not None else None,
                timeout=params["timeout"], on_output=events.feed if events else None)
        return self._bklite(command if command is not None else " ".join(shlex.quote(a) for a in argv), events)

    def _bklite(self, command: str, events: Optional[bklite.LineEvents]) -> Tuple[int, bytes, bytes]:
        params = self.params
        prefix = []
        if params["chdir"]:
            prefix.append("cd %s" % shlex.quote(params["chdir"]))
        timeout = int(math.ceil(params["timeout"])) or 3600
        request = {"command": command, "execute_timeout": timeout}
        if self.target:
            method = bklite.SSH_EXECUTE
            request.update(bklite.ssh_fields(self.target))
            prefix.extend("export %s=%s" % (k, shlex.quote(str(v))) for k, v in sorted((params["env"] or {}).items()))
        else:
            method = bklite.LOCAL_EXECUTE
            if params["env"]:
                request["env"] = {k: str(v) for k, v in params["env"].items()}
        if prefix:
            request["command"] = " && ".join(prefix + [command])
        if events is not None:
            request.update(stream_logs=True, stream_log_topic=events.topic, execution_id=events.execution_id)
        reply = self.client.bklite_call(method, request, timeout + 1)
        output = (reply.get("result") or "").encode("utf-8")
        if reply.get("success"):
            return reply.get("exit_code", 0), output, b""
        rc = reply.get("exit_code", bklite.exit_code(reply))
        if rc is None or reply.get("code") == bklite.TIMEOUT:
            raise bklite_failure(method, reply)
        return rc, output, b""

    def exists(self, path: str) -> bool:
        return self.run(argv=["test", "-e", path])[0] == 0


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            **TRUST_ARGUMENT_SPEC,
            executor={"type": "str", "required": True},
            executor_wait={"type": "float", "default": 30.0},
            cmd={"type": "str"},
            argv={"type": "list", "elements": "str"},
            chdir={"type": "path"},
            env={"type": "dict"},
            stdin={"type": "str"},
            timeout={"type": "float", "default": 0},
            creates={"type": "path"},
            removes={"type": "path"},
            stream_topic={"type": "str"},
            execution_id={"type": "str"},
            protocol={"type": "str", "choices": ["natsops", "bklite"], "default": "natsops"},
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
    client = executor_client(module, params["executor"], target_of(params))
    runner = _Runner(module, client)
    events = None
    if params["stream_topic"]:
        result["execution_id"] = params["execution_id"] or uuid.uuid4().hex
        events = bklite.LineEvents(client.publisher(), params["stream_topic"], result["execution_id"],
                                   on_error=lambda exc: module.warn("could not publish an output line: %s" % exc))
    try:
        try:
            if params["creates"] and runner.exists(params["creates"]):
                module.exit_json(msg="skipped, since %s exists" % params["creates"], **result)
            if params["removes"] and not runner.exists(params["removes"]):
                module.exit_json(msg="skipped, since %s does not exist" % params["removes"], **result)
            if module.check_mode:
                result.update(changed=True, msg="command would have run: %s" % shown)
                module.exit_json(**result)
            started = datetime.datetime.now()
            rc, out, err = runner.run(command=params["cmd"], argv=params["argv"], events=events)
            if events is not None and params["protocol"] == "natsops":
                client.flush_events(events)
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
