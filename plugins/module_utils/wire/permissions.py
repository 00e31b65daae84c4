# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The least-privilege NATS permissions of each party of the protocol, derived from its subjects.

Part of the wire contract: whoever renders a NATS server's authorization (the nats_server role, through
the ``natsops.fleet.nats_authorization`` filter) takes the subjects from here, so the permissions cannot
drift from what the executor, the callers and the probes really publish and subscribe.

Roles:
- ``controller``: calls executors (every operation, every instance id), discovers them, uses JetStream
  (Object Store uploads for executor_transfer, the NATS resource modules) and reads the probe registry.
- ``executor``: serves only its instance ids (and BK-Lite's subjects for them with ``bklite``), answers
  discovery, replies to callers, reads the Object Store buckets it places files from, and may ask which
  executors are online (``$SRV.INFO.natsops-executor``, read-only; the executor role's check uses it). It subscribes to
  no inbox but its own (``inbox_prefix``), so it cannot read other parties' replies or uploads.
- ``probe``: an agent on one host: serves that host's instance id and writes only its own registry key
  (``$KV.<namespace>_registry.<node id>``, a JetStream publish: no JetStream API rights).
- ``admin``: everything (no permissions block).

Standard library only, Python 3.8+ syntax.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from .bklite import DEFAULT_BUCKET as BKLITE_BUCKET, METHODS as BKLITE_METHODS, subject as bklite_subject
from .names import (
    DEFAULT_INBOX_PREFIX, DEFAULT_NAMESPACE, E_BAD_REQUEST, OPERATIONS, SERVICE_NAME, WireError, audit_subject, default_bucket,
    registry_subject, subject, validate_bucket, validate_inbox_prefix, validate_instance_id, validate_namespace,
)

ROLES = ("controller", "executor", "probe", "admin")


def inbox_prefix_for(name: str) -> str:
    """The inbox prefix of an identity: ``_INBOX.<name>`` (its replies arrive below it)."""
    return "%s.%s" % (DEFAULT_INBOX_PREFIX, name)


def probe_heartbeat_subject(namespace: str, host_id: str) -> str:
    """The subject a probe publishes its registration and heartbeats on: its own key of the registry bucket."""
    return registry_subject(namespace, host_id)


def _serve(namespace: str, instances: List[str], bklite: bool) -> List[str]:
    subjects = [subject(namespace, op, i) for i in instances for op in OPERATIONS]
    if bklite:
        subjects += [bklite_subject(method, i) for i in instances for method in BKLITE_METHODS]
    # NATS micro discovery: $SRV.<VERB>, $SRV.<VERB>.<name>, $SRV.<VERB>.<name>.<service id>
    return subjects + ["$SRV.*", "$SRV.*.%s" % SERVICE_NAME, "$SRV.*.%s.*" % SERVICE_NAME]


def _object_store_reads(buckets: List[str]) -> List[str]:
    if not buckets:
        return []
    subjects = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]  # nats-py looks the stream up by subject
    for bucket in buckets:
        stream = "OBJ_%s" % bucket
        subjects += ["$JS.API.STREAM.INFO.%s" % stream, "$JS.API.STREAM.MSG.GET.%s" % stream,
                     "$JS.API.DIRECT.GET.%s" % stream, "$JS.API.DIRECT.GET.%s.>" % stream,
                     "$JS.API.CONSUMER.CREATE.%s" % stream, "$JS.API.CONSUMER.CREATE.%s.>" % stream,
                     "$JS.API.CONSUMER.DELETE.%s.>" % stream]
    return subjects


def permissions(role: str, namespace: str = DEFAULT_NAMESPACE, instances: Sequence[str] = (),
                inbox_prefix: Optional[str] = None, bklite: bool = False,
                buckets: Optional[List[str]] = None) -> Optional[Dict[str, Any]]:
    """NATS ``permissions`` (``{"publish": {"allow": [...]}, "subscribe": {...}, "allow_responses": ...}``) for a
    party of the protocol, or None for ``admin`` (no restriction). Raises WireError on bad input."""
    if role not in ROLES:
        raise WireError(E_BAD_REQUEST, "role %r is unknown; use one of %s" % (role, ", ".join(ROLES)))
    if role == "admin":
        return None
    validate_namespace(namespace)
    inbox = validate_inbox_prefix(inbox_prefix or DEFAULT_INBOX_PREFIX) if role != "controller" else None
    instances = [validate_instance_id(i, allow_all=(role == "executor")) for i in (instances or [])]
    if role == "controller":
        jetstream = ["$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$O.>", "$KV.>"]
        publish = ["%s.%s.*" % (namespace, op) for op in OPERATIONS] + ["$SRV.>", "_INBOX.>"] + jetstream
        if bklite:
            publish += ["%s.*" % method for method in BKLITE_METHODS]
        # the controller may read every inbox (it may run anything anyway), so callers need no inbox prefix
        subscribe = ["_INBOX.>"]
        return {"publish": {"allow": _unique(publish)}, "subscribe": {"allow": _unique(subscribe)}}
    if not instances:
        raise WireError(E_BAD_REQUEST, "a %s identity needs the instance ids it serves" % role)
    if inbox == DEFAULT_INBOX_PREFIX:
        raise WireError(E_BAD_REQUEST, "a %s identity needs its own inbox prefix (for example %r), so that it cannot "
                                       "subscribe to other parties' replies under _INBOX.>" % (role, inbox_prefix_for("NAME")))
    if role == "probe" and len(instances) != 1:
        raise WireError(E_BAD_REQUEST, "a probe identity serves exactly one host id, got %s" % ", ".join(instances))
    if buckets is None:
        buckets = [default_bucket(namespace)] + ([BKLITE_BUCKET] if bklite else [])
    for bucket in buckets:
        validate_bucket(bucket)
    subscribe = _serve(namespace, instances, bklite and role == "executor") + ["%s.>" % inbox]
    # replies to callers, the audit records of its own instance ids, the Object Store buckets it places files from
    publish = (["_INBOX.>"] + [audit_subject(namespace, i) for i in instances]
               + _object_store_reads(buckets if role == "executor" else []))
    if role == "executor":
        # discovery of natsops executors (read-only): the executor role checks with the executor's identity
        # that it serves exactly its instance ids
        publish.append("$SRV.INFO.%s" % SERVICE_NAME)
    if role == "probe":
        publish.append(probe_heartbeat_subject(namespace, instances[0]))
    return {"publish": {"allow": _unique(publish)}, "subscribe": {"allow": _unique(subscribe)}, "allow_responses": True}


def _unique(items: List[str]) -> List[str]:
    return list(dict.fromkeys(items))
