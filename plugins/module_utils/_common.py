# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every natsops.fleet module shares: the NATS connection options (documented once in
doc_fragments/nats.py, named as in the connection plugin) and a client built from them."""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib

from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import DEFAULT_NAMESPACE, OPTION_NAMES, OPTION_SOURCES

_SECRETS = ("password", "token")
_PATHS = ("creds", "nkey", "ca", "cert", "key")


def _option_spec(name):
    spec = {"type": "str"}
    if name == "servers":
        spec = {"type": "list", "elements": "str"}
    elif name in _PATHS:
        spec = {"type": "path"}
    if name in _SECRETS:
        spec["no_log"] = True
    spec["fallback"] = (env_fallback, [OPTION_SOURCES[name][1]])
    return spec


NATS_ARGUMENT_SPEC = dict((name, _option_spec(name)) for name in OPTION_NAMES)
NATS_ARGUMENT_SPEC["namespace"] = {"type": "str", "default": DEFAULT_NAMESPACE}
NATS_ARGUMENT_SPEC["connect_timeout"] = {"type": "float", "default": 10.0}


# SSH mode (doc_fragments/target.py)
TARGET_SPEC = {
    "host": {"type": "str", "required": True},
    "port": {"type": "int", "default": 22},
    "user": {"type": "str", "required": True},
    "identity": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "private_key": {"type": "str", "no_log": True},
    "passphrase": {"type": "str", "no_log": True},
}


def target_of(params):
    """The wire target from the module's O(target), or None (the executor's own host)."""
    return dict((k, v) for k, v in (params.get("target") or {}).items() if v is not None) or None


def argument_spec(**extra):
    """The NATS options plus a module's own."""
    spec = dict(NATS_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


def nats_options(params):
    return dict((name, params.get(name)) for name in OPTION_NAMES)


def executor_client(module, instance_id=None, target=None):
    """A connected ExecutorClient, or fail_json with the reason (nats-py missing, NATS unreachable)."""
    from ansible_collections.natsops.fleet.plugins.module_utils import _client as client  # pylint: disable=import-outside-toplevel
    from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import WireError  # pylint: disable=import-outside-toplevel
    if not client.HAS_NATS:
        module.fail_json(msg=client.missing_nats_message())
    params = module.params
    try:
        return client.ExecutorClient(nats_options(params), instance_id, namespace=params["namespace"],
                                     connect_timeout=params["connect_timeout"], name="natsops.fleet %s" % module._name,
                                     target=target).connect()
    except WireError as exc:  # ExecutorError included: NATS unreachable, bad instance id or namespace
        module.fail_json(msg=exc.message, code=exc.code)
    except ValueError as exc:
        module.fail_json(msg="bad NATS connection options: %s" % exc)


def bklite_target(module):
    """The module's target for protocol bklite (which has no executor identities), or None."""
    target = target_of(module.params)
    if target and target.get("identity"):
        module.fail_json(msg="protocol bklite has no executor identities: give target.password or target.private_key")
    return target


def bklite_failure(method, reply, keys=("stage", "category")):
    """The error of a failed BK-Lite reply, with those of its fields that are set as details."""
    from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError  # pylint: disable=import-outside-toplevel
    details = dict((k, reply[k]) for k in keys if reply.get(k))
    return ExecutorTaskError(reply.get("code") or "internal", "BK-Lite %s failed: %s" % (method, reply.get("error")), details)


def compile_query(module, option="query"):
    """The module's JMESPath option compiled (None when not set); fail_json when jmespath is missing or the
    expression is not valid, before the module does anything."""
    expression = module.params.get(option)
    if not expression:
        return None
    try:
        import jmespath  # pylint: disable=import-outside-toplevel
    except ImportError:
        module.fail_json(msg=missing_required_lib("jmespath"), exception=traceback.format_exc())
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        module.fail_json(msg="%s is not a valid JMESPath expression: %s" % (option, exc))
