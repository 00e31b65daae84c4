# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: nats
short_description: Run tasks through a natsops executor over NATS
description:
  - Runs Ansible tasks on a host through a C(natsops-executor) reached over NATS, so the controller only
    needs to reach a NATS server, never the host itself.
  - Every builtin module works; module runs are pipelined (one NATS round trip per module), files are
    transferred in chunks with a SHA-256 check and land complete or not at all, and become (sudo, su) prompts
    are answered by the executor.
  - When no executor serves the addressed instance id, the task is unreachable with a message that names
    the subject, the instance id asked for, the instance ids that are online, and how to fix it.
  - Privilege escalation (waiting for the become prompt, then for its success) is bounded by O(connect_timeout).
  - See docs/protocol.md in the collection for the wire contract.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats
  - natsops.fleet.nats.namespace
  - natsops.fleet.nats.plugin
  - natsops.fleet.nats.var_names
  - natsops.fleet.trust
  - natsops.fleet.trust.plugin
options:
  executor:
    description:
      - The instance id of the executor(s) that run this host's tasks, for example a zone name such as
        C(default) or C(管理网) for a zone executor, or the host's node id for an executor running on the host.
      - Defaults to the inventory hostname (agent mode with one executor per host).
    type: str
    vars:
      - name: inventory_hostname
      - name: ansible_nats_executor
    env:
      - name: ANSIBLE_NATS_EXECUTOR
    ini:
      - section: natsops
        key: executor
  mode:
    description:
      - C(agent) runs the task on the executor's own host.
      - C(ssh) makes the executor (a zone executor) run the task on C(ansible_host) over SSH, as C(ansible_user)
        on C(ansible_port); the controller never connects to the host. The executor verifies the host key
        against its own known_hosts and authenticates with O(ssh_identity), O(ssh_password) or
        O(ssh_private_key_file), or else with its default identity.
    type: str
    default: agent
    choices: [agent, ssh]
    vars:
      - name: ansible_nats_mode
    env:
      - name: ANSIBLE_NATS_MODE
    ini:
      - section: natsops
        key: mode
  namespace:
    vars:
      - name: ansible_nats_namespace
    env:
      - name: ANSIBLE_NATS_NAMESPACE
    ini:
      - section: natsops
        key: namespace
  executor_wait:
    description:
      - Seconds a task waits for an executor of its instance id when none answers, for example while the executor
        restarts or a NATS server fails over; the request is sent again with backoff (it ran nowhere, so it cannot
        run twice). The host is unreachable only after that, with the same message as before.
      - C(0) fails at once.
    type: float
    default: 30
    vars:
      - name: ansible_nats_executor_wait
    env:
      - name: ANSIBLE_NATS_EXECUTOR_WAIT
    ini:
      - section: natsops
        key: executor_wait
  task_timeout:
    description:
      - Seconds a single command may run on the host; the executor then kills its whole process group
        and the task fails saying so. C(0) means no limit.
      - A vanished executor is noticed within seconds regardless, through its keepalives.
    type: float
    default: 0
    vars:
      - name: ansible_nats_task_timeout
    env:
      - name: ANSIBLE_NATS_TASK_TIMEOUT
    ini:
      - section: natsops
        key: task_timeout
  pipelining:
    description:
      - Run modules by sending them on the command's standard input, one NATS round trip per module.
      - When off, modules are copied to a temporary directory first, like other connections do.
    type: boolean
    default: true
    vars:
      - name: ansible_pipelining
      - name: ansible_nats_pipelining
    env:
      - name: ANSIBLE_PIPELINING
      - name: ANSIBLE_NATS_PIPELINING
    ini:
      - section: natsops
        key: pipelining
  warm:
    description:
      - Let the executor run this host's pipelined module runs from a warm interpreter, a process that imported
        C(ansible.module_utils) once and forks a child per module run (in mode C(agent) on the executor's host, in
        mode C(ssh) on the target through a warm runner the zone executor keeps there; the executor's own C(warm)
        option must be on too, its default). Anything the executor does not recognise exactly as ansible-core's
        pipelined module run, or that uses C(become) or a pty, runs cold regardless.
      - C(false) makes every command of this host (or task, as a task variable) start a new interpreter, as
        without warm runs; the executor counts them under C(caller_opt_out) (see M(natsops.fleet.executor_info)).
    type: boolean
    default: true
    vars:
      - name: ansible_nats_warm
    env:
      - name: ANSIBLE_NATS_WARM
    ini:
      - section: natsops
        key: warm
  control_persist:
    description:
      - Seconds a per-user control process keeps the NATS connection open after the last task, like ssh's
        ControlPersist. Task workers then talk to it over a private Unix socket in C(~/.ansible/natsops/cp)
        instead of importing the NATS client and connecting for every task.
      - C(0) connects from each task's worker process instead.
    type: float
    default: 60
    vars:
      - name: ansible_nats_control_persist
    env:
      - name: ANSIBLE_NATS_CONTROL_PERSIST
    ini:
      - section: natsops
        key: control_persist
  remote_user:
    description:
      - The account commands run as before any become, that is the account of the executor (agent mode),
        or the SSH login user on the host (mode C(ssh)).
      - Ansible uses it to decide how to share temporary files with an unprivileged become user, and leaves
        become out when C(become_user) equals it.
      - When not set, agent mode asks the executor which account it runs as (its discovery record, shown by
        M(natsops.fleet.executor_info) as C(account); once per executor while the control process lives), so that
        C(become) is applied exactly when the executor's account is not C(become_user). Mode C(ssh) logs in as
        C(root) when it is not set.
      - Set to another account than the executor's, a command that ansible-core sends without become because
        C(become_user) equals it is refused by the executor (nothing runs) and sent again with the become
        method applied, so that C(become) is never skipped silently.
    type: str
    vars:
      - name: ansible_user
      - name: ansible_nats_user_account
    env:
      - name: ANSIBLE_REMOTE_USER
    keyword:
      - name: remote_user
    ini:
      - section: defaults
        key: remote_user
  port:
    description: SSH port of the host (mode C(ssh) only).
    type: int
    default: 22
    vars:
      - name: ansible_port
      - name: ansible_ssh_port
    env:
      - name: ANSIBLE_REMOTE_PORT
    keyword:
      - name: port
    ini:
      - section: defaults
        key: remote_port
  ssh_identity:
    description:
      - Mode C(ssh) only. The name of a private key configured on the executor (C(--ssh-identity NAME=FILE)).
        The preferred way to authenticate, since no secret travels with the request.
      - Without it, and without O(ssh_password) or O(ssh_private_key_file), the executor uses its identity
        C(default) or its own C(~/.ssh/id_*) keys.
    type: str
    vars:
      - name: ansible_nats_ssh_identity
    env:
      - name: ANSIBLE_NATS_SSH_IDENTITY
    ini:
      - section: natsops
        key: ssh_identity
  ssh_password:
    description:
      - Mode C(ssh) only. Password of O(remote_user) on the host, sent to the executor with each request
        (never logged). Prefer O(ssh_identity); use TLS to NATS when passwords travel.
    type: str
    vars:
      - name: ansible_password
      - name: ansible_ssh_pass
      - name: ansible_ssh_password
  ssh_private_key_file:
    description:
      - Mode C(ssh) only. A private key file on the controller whose content is sent to the executor with
        each request (never logged; BK-Lite parity). Deliberately not read from C(ansible_ssh_private_key_file),
        so that a controller key never leaves the controller unless asked for. Prefer O(ssh_identity).
    type: path
    vars:
      - name: ansible_nats_ssh_private_key_file
  ssh_private_key_passphrase:
    description: Mode C(ssh) only. Passphrase of O(ssh_private_key_file).
    type: str
    vars:
      - name: ansible_nats_ssh_private_key_passphrase
"""

EXAMPLES = r"""
# inventory: hosts reached through the executor running on each of them (agent mode)
# all:
#   vars:
#     ansible_connection: natsops.fleet.nats
#     ansible_nats_servers: nats://nats.example.com:4222
#     ansible_nats_creds: /etc/natsops/controller.creds
#   hosts:
#     web1:
#     web2:

# a play that addresses the executor serving the zone instance id directly
- name: Run through the executor of one zone
  hosts: zone_hosts
  vars:
    ansible_connection: natsops.fleet.nats
    ansible_nats_executor: default
  tasks:
    - name: Facts arrive through NATS
      ansible.builtin.setup:
"""


import importlib
import importlib.util
import os
import sys
from typing import Any


def _load_codecache() -> Any:
    """plugin_utils/_codecache.py, loaded as ansible-core loads this file: by Python's source loader, which keeps its
    bytecode in __pycache__ where it may (the collection loader would compile it in every task's worker)."""
    name = "ansible_collections.natsops.fleet.plugins.plugin_utils._codecache"
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugin_utils", "_codecache.py")
    package = importlib.import_module(name.rpartition(".")[0])
    if name not in sys.modules and os.path.isfile(path):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
            setattr(package, "_codecache", module)
        except Exception:  # pylint: disable=broad-except
            del sys.modules[name]  # only speed is at stake: the collection loader imports it below
    return importlib.import_module(name)


# this file is imported in every task's worker process: the plugin's code lives in plugin_utils/_connection.py and
# the collection code it imports (standard library and ansible-core only); their compiled code is kept across workers
_load_codecache().preload(("module_utils.wire.names", "module_utils._errors", "plugin_utils._options", "plugin_utils._mux",
                           "plugin_utils._connection"))

from ansible_collections.natsops.fleet.plugins.plugin_utils._connection import Connection, register_option_definitions  # noqa: E402  pylint: disable=wrong-import-position

__all__ = ["Connection"]

register_option_definitions(__name__, DOCUMENTATION, __file__)
