# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """What executor_command and executor_transfer address: the executor(s) of an instance id and, in SSH mode,
    the host a zone executor works on."""

    DOCUMENTATION = r"""
options:
  executor:
    description: Instance id of the executor(s) to address, for example a zone name such as C(管理网).
    type: str
    required: true
  executor_wait:
    description:
      - Seconds to wait for an executor of O(executor) when none answers (a restart, a NATS failover); the request is
        sent again with backoff (it ran nowhere, so it cannot run twice). C(0) fails at once.
    type: float
    default: 30
  target:
    description:
      - SSH mode, the host the executor works on over SSH (host key checked against the executor's known_hosts).
      - Without it the executor works on its own host.
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
"""
