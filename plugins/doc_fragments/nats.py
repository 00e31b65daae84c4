# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


# Each NATS connection option's description and type, written once; the fragments below are built from it.
_CONNECTION_OPTIONS = r"""
  servers:
    description:
      - NATS server URLs, comma-separated or a list; several URLs of one cluster give failover.
        C(tls://) URLs enable TLS.
      - When none is given, the URL of the natscli context (see O(context)), else C(nats://127.0.0.1:4222).
    type: list
    elements: str
  user:
    description: NATS user name (user/password authentication, with O(password)).
    type: str
  password:
    description: NATS password for O(user). Never logged.
    type: str
  token:
    description: NATS authentication token. Never logged.
    type: str
  creds:
    description:
      - Path of a JWT user credentials file (C(.creds), operator mode).
      - Also a natscli credential URI, C(file://PATH), C(env://VARIABLE) (the content in an environment variable)
        or C(data:;base64,...) (the content inline).
    type: path
  nkey:
    description:
      - Path of an NKey seed file; like O(creds), also C(file://), C(env://) or C(data:).
    type: path
  ca:
    description: CA certificate file to verify the NATS server with (enables TLS).
    type: path
  cert:
    description: Client certificate for mutual TLS; needs O(key).
    type: path
  key:
    description: Private key of O(cert), for mutual TLS.
    type: path
  tls_hostname:
    description: Host name to verify in the server certificate when it differs from the URL's.
    type: str
  inbox_prefix:
    description:
      - Subject prefix of this client's reply inboxes (default C(_INBOX)).
      - With the least-privilege permissions of the P(natsops.fleet.nats_server#role) role, an identity may only
        subscribe below its own prefix, C(_INBOX.<user name>); set it to that.
    type: str
  context:
    description:
      - Name of a natscli context (C(~/.config/nats/context/NAME.json), below C($XDG_CONFIG_HOME) when set), read
        as natscli reads it; when neither this option nor E(NATS_CONTEXT) names one, the context selected with
        C(nats context select) (C(~/.config/nats/context.txt)) is used.
      - The context's URL, TLS files, inbox prefix, JetStream domain and TLS-first setting fill the options that
        are not set otherwise; its credentials are used when no credentials (O(user), O(token), O(creds),
        O(nkey)) are given otherwise.
      - A context that sets fields this collection cannot honour (C(nsc), C(user_jwt), C(jetstream_api_prefix),
        C(windows_cert_store)) is refused with a message that says what to use instead.
    type: str
  jetstream_domain:
    description:
      - JetStream domain of the streams, key-value buckets and object stores used (for example the domain of a
        leaf node's JetStream); JetStream API requests then go to C($JS.<domain>.API).
      - Unset, the domain of the natscli context if any, else the JetStream of the account the client is in.
    type: str
  connect_timeout:
    description: Seconds to wait for the NATS connection and for each reply that accepts or answers a request.
    type: float
    default: 10
"""

# The fleet's subject prefix: the connection plugin, the modules and the probes inventory (not the kv lookup,
# which reads a bucket by its name).
_NAMESPACE_OPTION = r"""
  namespace:
    description: Subject prefix of the fleet (the executors' C(--namespace)); several fleets can share one NATS system.
    type: str
    default: natsops
"""

# Modules: the argument spec reads an option that is not set from the environment where the module runs.
_MODULE_NOTES = r"""
notes:
  - "A NATS connection option that is not set in the task is read from an environment variable where the module runs
    (natscli's names): O(servers) from E(NATS_URL), O(user) from E(NATS_USER), O(password) from E(NATS_PASSWORD),
    O(token) from E(NATS_TOKEN), O(creds) from E(NATS_CREDS), O(nkey) from E(NATS_NKEY), O(ca) from E(NATS_CA),
    O(cert) from E(NATS_CERT), O(key) from E(NATS_KEY), O(tls_hostname) from E(NATS_TLS_HOSTNAME),
    O(inbox_prefix) from E(NATS_INBOX_PREFIX), O(context) from E(NATS_CONTEXT), O(jetstream_domain) from
    E(NATS_JETSTREAM_DOMAIN) (natscli has only its C(--js-domain) flag)."
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


class ModuleDocFragment:
    """The NATS connection options, with the same names everywhere (``OPTION_NAMES`` of
    plugins/module_utils/wire/names.py, plus ``connect_timeout``).

    Each option's description and type are written once, in DOCUMENTATION. The other fragments add only where
    a kind of plugin reads the options from (community.docker's ``var_names`` pattern):

    - the connection plugin: natsops.fleet.nats, natsops.fleet.nats.plugin (environment and ansible.cfg),
      natsops.fleet.nats.var_names (ansible_nats_<name> variables);
    - the kv lookup and the probes inventory: natsops.fleet.nats, natsops.fleet.nats.plugin;
    - the modules: natsops.fleet.nats.module alone (the options and the namespace, plus where a module reads
      them: its argument spec falls back to the environment, plugins/module_utils/_common.py).

    natsops.fleet.nats.namespace documents the fleet's subject prefix for those that address executors or
    probes (the connection plugin, the modules, the probes inventory).

    The environment variables are those of ``OPTION_SOURCES`` in wire/names.py (natscli's names);
    tests/unit/plugins/doc_fragments/test_nats.py keeps the two equal.
    """

    # The fragments composed from the shared text are annotated assignments: ansible-test's yamllint reads every plain
    # assignment of a fragment class as one string literal and crashes on a concatenation. ansible-doc and
    # validate-modules read the composed text (tests/unit/plugins/doc_fragments/test_nats.py parses it too).
    DOCUMENTATION: str = "options:\n" + _CONNECTION_OPTIONS

    NAMESPACE: str = "options:\n" + _NAMESPACE_OPTION

    # Plugins that run on the controller (connection, lookup, inventory) also read each option from the
    # environment and from the [natsops] section of ansible.cfg.
    PLUGIN = r"""
options:
  servers:
    env:
      - name: NATS_URL
    ini:
      - section: natsops
        key: servers
  user:
    env:
      - name: NATS_USER
    ini:
      - section: natsops
        key: user
  password:
    env:
      - name: NATS_PASSWORD
    ini:
      - section: natsops
        key: password
  token:
    env:
      - name: NATS_TOKEN
    ini:
      - section: natsops
        key: token
  creds:
    env:
      - name: NATS_CREDS
    ini:
      - section: natsops
        key: creds
  nkey:
    env:
      - name: NATS_NKEY
    ini:
      - section: natsops
        key: nkey
  ca:
    env:
      - name: NATS_CA
    ini:
      - section: natsops
        key: ca
  cert:
    env:
      - name: NATS_CERT
    ini:
      - section: natsops
        key: cert
  key:
    env:
      - name: NATS_KEY
    ini:
      - section: natsops
        key: key
  tls_hostname:
    env:
      - name: NATS_TLS_HOSTNAME
    ini:
      - section: natsops
        key: tls_hostname
  inbox_prefix:
    env:
      - name: NATS_INBOX_PREFIX
    ini:
      - section: natsops
        key: inbox_prefix
  context:
    env:
      - name: NATS_CONTEXT
    ini:
      - section: natsops
        key: context
  jetstream_domain:
    env:
      - name: NATS_JETSTREAM_DOMAIN
    ini:
      - section: natsops
        key: jetstream_domain
  connect_timeout:
    env:
      - name: ANSIBLE_NATS_CONNECT_TIMEOUT
    ini:
      - section: natsops
        key: connect_timeout
requirements:
  - nats-py >= 2.9 (and nkeys for NKey/JWT authentication) on the controller
"""

    # The connection plugin also reads each option from a host or group variable ansible_nats_<name>.
    VAR_NAMES = r"""
options:
  servers:
    vars:
      - name: ansible_nats_servers
  user:
    vars:
      - name: ansible_nats_user
  password:
    vars:
      - name: ansible_nats_password
  token:
    vars:
      - name: ansible_nats_token
  creds:
    vars:
      - name: ansible_nats_creds
  nkey:
    vars:
      - name: ansible_nats_nkey
  ca:
    vars:
      - name: ansible_nats_ca
  cert:
    vars:
      - name: ansible_nats_cert
  key:
    vars:
      - name: ansible_nats_key
  tls_hostname:
    vars:
      - name: ansible_nats_tls_hostname
  inbox_prefix:
    vars:
      - name: ansible_nats_inbox_prefix
  context:
    vars:
      - name: ansible_nats_context
  jetstream_domain:
    vars:
      - name: ansible_nats_jetstream_domain
  connect_timeout:
    vars:
      - name: ansible_nats_connect_timeout
"""

    # Modules: the connection options, the namespace and where a module reads them (its argument spec,
    # plugins/module_utils/_common.py, falls back to the environment).
    MODULE: str = "options:\n" + _CONNECTION_OPTIONS + _NAMESPACE_OPTION + _MODULE_NOTES
