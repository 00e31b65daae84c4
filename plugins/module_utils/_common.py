# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the natsops.fleet modules share (private to this collection).

Every module: the NATS connection options, named as in the connection plugin and read from the environment when
not set (documented once in doc fragment natsops.fleet.nats), the module's client name, and the JMESPath ``query``
option. The executor modules (executor_command, executor_transfer, executor_info): the SSH ``target`` (documented
in doc fragment natsops.fleet.executor), a connected executor client, and how BK-Lite replies fail.
"""

from __future__ import annotations

import traceback
from typing import Any, Dict, Optional, Sequence

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorTaskError
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import (
    DEFAULT_NAMESPACE, E_INTERNAL, OPTION_NAMES, OPTION_SOURCES, TRUST_SOURCES, WireError,
)
from ansible_collections.natsops.fleet.plugins.module_utils.wire.signing import DEFAULT_KNOWN_EXECUTORS

_SECRETS = ("password", "token")
_PATHS = ("creds", "nkey", "ca", "cert", "key")


def _option_spec(name: str) -> Dict[str, Any]:
    spec: Dict[str, Any] = {"type": "str"}
    if name == "servers":
        spec = {"type": "list", "elements": "str"}
    elif name in _PATHS:
        spec = {"type": "path"}
    if name in _SECRETS:
        spec["no_log"] = True
    spec["fallback"] = (env_fallback, [OPTION_SOURCES[name][1]])
    return spec


NATS_ARGUMENT_SPEC = {name: _option_spec(name) for name in OPTION_NAMES}
NATS_ARGUMENT_SPEC["namespace"] = {"type": "str", "default": DEFAULT_NAMESPACE}
NATS_ARGUMENT_SPEC["connect_timeout"] = {"type": "float", "default": 10.0}

# the executor modules sign their requests and check replies against pinned keys (doc fragment natsops.fleet.trust)
TRUST_ARGUMENT_SPEC = {name: {"type": "path", "fallback": (env_fallback, [env])} for name, env in TRUST_SOURCES.items()}
TRUST_ARGUMENT_SPEC["known_executors"]["default"] = DEFAULT_KNOWN_EXECUTORS


# SSH mode: the host an executor reaches over SSH (option target, doc fragment natsops.fleet.executor)
TARGET_SPEC = {
    "host": {"type": "str", "required": True},
    "port": {"type": "int", "default": 22},
    "user": {"type": "str", "required": True},
    "identity": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "private_key": {"type": "str", "no_log": True},
    "passphrase": {"type": "str", "no_log": True},
}


def target_of(params: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The wire target from the module's O(target), or None (the executor's own host)."""
    return {k: v for k, v in (params.get("target") or {}).items() if v is not None} or None


def argument_spec(**extra: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The NATS options plus a module's own."""
    spec = dict(NATS_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


def nats_options(params: Dict[str, Any]) -> Dict[str, Any]:
    """The NATS connection options of the module's parameters, by their names in wire/names.py."""
    return {name: params.get(name) for name in OPTION_NAMES}


def client_name(module: AnsibleModule) -> str:
    """The name the module's NATS connection shows to the server (``nats server report connections``)."""
    return "natsops.fleet %s" % module._name


def executor_client(module: AnsibleModule, instance_id: Optional[str] = None, target: Optional[Dict[str, Any]] = None) -> Any:
    """A connected _client.ExecutorClient, or fail_json with the reason (nats-py missing, NATS unreachable)."""
    from ansible_collections.natsops.fleet.plugins.module_utils import _client  # pylint: disable=import-outside-toplevel
    if not _client.HAS_NATS:
        module.fail_json(msg=_client.missing_nats_message())
    params = module.params
    try:
        return _client.ExecutorClient(nats_options(params), instance_id, namespace=params["namespace"],
                                      connect_timeout=params["connect_timeout"], name=client_name(module),
                                      target=target, trust=_client.CallerTrust.from_options(params),
                                      executor_wait=params.get("executor_wait") or 0).connect()
    except WireError as exc:  # ExecutorError included: NATS unreachable, bad instance id or namespace
        module.fail_json(msg=exc.message, code=exc.code)
    except ValueError as exc:
        module.fail_json(msg="bad NATS connection options: %s" % exc)


def bklite_target(module: AnsibleModule) -> Optional[Dict[str, Any]]:
    """The module's target for protocol bklite (which has no executor identities), or None."""
    target = target_of(module.params)
    if target and target.get("identity"):
        module.fail_json(msg="protocol bklite has no executor identities: give target.password or target.private_key")
    return target


def bklite_failure(method: str, reply: Dict[str, Any], keys: Sequence[str] = ("stage", "category")) -> ExecutorTaskError:
    """The error of a failed BK-Lite reply, with those of its fields that are set as details."""
    details = {k: reply[k] for k in keys if reply.get(k)}
    return ExecutorTaskError(reply.get("code") or E_INTERNAL, "BK-Lite %s failed: %s" % (method, reply.get("error")), details)


def compile_query(module: AnsibleModule, option: str = "query") -> Any:
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
