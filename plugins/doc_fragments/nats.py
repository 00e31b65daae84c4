# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """How modules connect to NATS: the same option names as the natsops.fleet.nats connection plugin."""

    DOCUMENTATION = r"""
options:
  servers:
    description:
      - NATS server URLs, comma-separated or a list; several URLs of one cluster give failover.
        C(tls://) URLs enable TLS.
      - Defaults to E(NATS_URL), then C(nats://127.0.0.1:4222).
    type: list
    elements: str
  user:
    description: NATS user name (with O(password)). Defaults to E(NATS_USER).
    type: str
  password:
    description: NATS password for O(user). Defaults to E(NATS_PASSWORD). Never logged.
    type: str
  token:
    description: NATS authentication token. Defaults to E(NATS_TOKEN). Never logged.
    type: str
  creds:
    description: JWT user credentials file (C(.creds), operator mode). Defaults to E(NATS_CREDS).
    type: path
  nkey:
    description: NKey seed file. Defaults to E(NATS_NKEY).
    type: path
  ca:
    description: CA certificate(s) to verify the NATS server. Defaults to E(NATS_CA).
    type: path
  cert:
    description: Client certificate for mutual TLS. Defaults to E(NATS_CERT).
    type: path
  key:
    description: Client private key for mutual TLS. Defaults to E(NATS_KEY).
    type: path
  tls_hostname:
    description: Host name expected in the server certificate. Defaults to E(NATS_TLS_HOSTNAME).
    type: str
  inbox_prefix:
    description:
      - Subject prefix of this client's reply inboxes. Defaults to E(NATS_INBOX_PREFIX), then C(_INBOX).
      - With the least-privilege permissions of the P(natsops.fleet.nats_server#role) role, an identity may only
        subscribe below its own prefix, C(_INBOX.<user name>); set it to that.
    type: str
  context:
    description:
      - Name of a natscli context whose URL and credentials fill the options not set otherwise.
        Defaults to E(NATS_CONTEXT).
    type: str
  namespace:
    description: Subject prefix of the fleet (the executors' C(--namespace)).
    type: str
    default: natsops
  connect_timeout:
    description: Seconds to wait for the NATS connection and for replies that start a job.
    type: float
    default: 10
notes:
  - "These modules run where the task runs; to talk to NATS from the controller use C(delegate_to: localhost)
    (or C(hosts: localhost)) with an interpreter that has nats-py, for example
    C(ansible_python_interpreter: '{{ ansible_playbook_python }}')."
requirements:
  - nats-py >= 2.9 (and nkeys for NKey/JWT authentication) where the module runs
attributes:
  action_group:
    description: Use C(group/natsops.fleet.nats) in C(module_defaults) to set the NATS connection options once.
    support: full
    membership:
      - natsops.fleet.nats
"""

    # Plugins that run on the controller (lookup, inventory): the same names, also read from the environment and
    # from the [natsops] section of ansible.cfg, like the natsops.fleet.nats connection plugin.
    PLUGIN = r"""
options:
  servers:
    description: NATS server URLs, comma-separated or a list; several URLs of one cluster give failover. C(tls://) URLs enable TLS.
    type: list
    elements: str
    env:
      - name: NATS_URL
    ini:
      - section: natsops
        key: servers
  user:
    description: NATS user name (with O(password)).
    type: str
    env:
      - name: NATS_USER
    ini:
      - section: natsops
        key: user
  password:
    description: NATS password for O(user). Never logged.
    type: str
    env:
      - name: NATS_PASSWORD
    ini:
      - section: natsops
        key: password
  token:
    description: NATS authentication token. Never logged.
    type: str
    env:
      - name: NATS_TOKEN
    ini:
      - section: natsops
        key: token
  creds:
    description: JWT user credentials file (C(.creds), operator mode).
    type: path
    env:
      - name: NATS_CREDS
    ini:
      - section: natsops
        key: creds
  nkey:
    description: NKey seed file.
    type: path
    env:
      - name: NATS_NKEY
    ini:
      - section: natsops
        key: nkey
  ca:
    description: CA certificate(s) to verify the NATS server.
    type: path
    env:
      - name: NATS_CA
    ini:
      - section: natsops
        key: ca
  cert:
    description: Client certificate for mutual TLS.
    type: path
    env:
      - name: NATS_CERT
    ini:
      - section: natsops
        key: cert
  key:
    description: Client private key for mutual TLS.
    type: path
    env:
      - name: NATS_KEY
    ini:
      - section: natsops
        key: key
  tls_hostname:
    description: Host name expected in the server certificate.
    type: str
    env:
      - name: NATS_TLS_HOSTNAME
    ini:
      - section: natsops
        key: tls_hostname
  inbox_prefix:
    description:
      - Subject prefix of this client's reply inboxes (default C(_INBOX)).
      - With the least-privilege permissions of the P(natsops.fleet.nats_server#role) role, C(_INBOX.<user name>).
    type: str
    env:
      - name: NATS_INBOX_PREFIX
    ini:
      - section: natsops
        key: inbox_prefix
  context:
    description: Name of a natscli context whose URL and credentials fill the options not set otherwise.
    type: str
    env:
      - name: NATS_CONTEXT
    ini:
      - section: natsops
        key: context
  connect_timeout:
    description: Seconds to wait for the NATS connection and for replies.
    type: float
    default: 10
    env:
      - name: ANSIBLE_NATS_CONNECT_TIMEOUT
    ini:
      - section: natsops
        key: connect_timeout
requirements:
  - nats-py >= 2.9 (and nkeys for NKey/JWT authentication) on the controller
"""
