# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The names both ends of the natsops protocol share: protocol version, namespace, instance ids,
operations and subjects, error codes, and the NATS connection option names.

Part of the wire contract (``contract.py`` re-exports all of it); kept apart because the connection
plugin imports it in every task's worker process, where only names and validation are needed.
Standard library only, Python 3.8+ syntax.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

PROTOCOL_VERSION = 1
DEFAULT_NAMESPACE = "natsops"
SERVICE_NAME = "natsops-executor"
# One queue group for every executor endpoint: executors sharing an instance id
# (or serving all of them with ``*``) share the load and each request runs once.
QUEUE_GROUP = "natsops-executors"
ALL_INSTANCES = "*"

OP_EXEC = "exec"
OP_PUT = "put"
OP_FETCH = "fetch"
OP_TRANSFER = "transfer"   # place a JetStream Object Store object (or a file of the executor host) at a path
OPERATIONS = (OP_EXEC, OP_PUT, OP_FETCH, OP_TRANSFER)

# every NATS connection option, as the plugin, the modules and the executor spell it, with its
# natscli context field and environment variable (None: no such source)
OPTION_SOURCES = {
    "servers": ("url", "NATS_URL"),
    "user": ("user", "NATS_USER"),
    "password": ("password", "NATS_PASSWORD"),
    "token": ("token", "NATS_TOKEN"),
    "creds": ("creds", "NATS_CREDS"),
    "nkey": ("nkey", "NATS_NKEY"),
    "ca": ("ca", "NATS_CA"),
    "cert": ("cert", "NATS_CERT"),
    "key": ("key", "NATS_KEY"),
    "inbox_prefix": ("inbox_prefix", "NATS_INBOX_PREFIX"),
    "tls_hostname": (None, "NATS_TLS_HOSTNAME"),
    "context": (None, "NATS_CONTEXT"),        # the natscli context that fills the options not set otherwise
    "jetstream_domain": ("jetstream_domain", "NATS_JETSTREAM_DOMAIN"),  # natscli: --js-domain, no variable
}
OPTION_NAMES = tuple(OPTION_SOURCES)
# who signs and whom a caller believes (wire/signing.py): option name -> environment variable, for every caller
TRUST_SOURCES = {
    "signing_key": "NATSOPS_SIGNING_KEY",          # the NKey seed file requests are signed with
    "known_executors": "NATSOPS_KNOWN_EXECUTORS",  # the executor keys pinned per instance id
}
TRUST_NAMES = tuple(TRUST_SOURCES)
# Replies arrive below the inbox prefix. Give each identity its own (``_INBOX.<name>``) and allow it to
# subscribe only there: then no party can read another party's replies (see wire/permissions.py).
DEFAULT_INBOX_PREFIX = "_INBOX"

# Error codes: every error reply carries one of these.
E_BAD_JSON = "bad_json"
E_BAD_REQUEST = "bad_request"
E_BAD_INSTANCE = "bad_instance"
E_BAD_PATH = "bad_path"
E_TOO_LARGE = "too_large"
E_UNSUPPORTED_VERSION = "unsupported_version"
E_NOT_FOUND = "not_found"
E_PERMISSION = "permission_denied"
E_IO = "io_error"
E_SIZE_MISMATCH = "size_mismatch"
E_CHECKSUM_MISMATCH = "checksum_mismatch"
E_STREAM = "stream_error"
E_TIMEOUT = "timeout"
E_BECOME = "become_failed"             # details.reason: premature_end, duplicate_prompt, incorrect_password, ...
E_BECOME_TIMEOUT = "become_timeout"    # no success marker in time: the host is unreachable, as with ssh and local
E_SPAWN = "spawn_failed"
E_ABORTED = "aborted"
E_INTERRUPTED = "interrupted"          # the executor stopped while the job ran (its processes were killed)
E_BUSY = "busy"                        # the executor runs and queues all it may: try again later
E_EXPIRED = "expired"                  # the request's caller gave up before it could start; it did not run
E_INTERNAL = "internal"
E_ACCOUNT = "account_mismatch"         # the command would start as another account than the caller's run_as; not run
E_PAYLOAD_MISSING = "payload_missing"  # a stdin blob named by digest is not in the executor's cache; not run (details.missing)
# SSH mode (the executor reaches the target host over SSH); details carry "stage", one of SSH_STAGES.
E_TARGET_UNREACHABLE = "target_unreachable"   # TCP connect or SSH handshake failed
E_HOST_KEY = "host_key_rejected"             # unknown (strict policy) or changed host key
E_TARGET_AUTH = "target_auth_failed"         # the SSH user/key/password was refused
# Raised on the caller side only.
E_NO_RESPONDERS = "no_responders"
E_EXECUTOR_LOST = "executor_lost"
E_CONNECT = "connect_failed"

ERROR_CODES = (
    E_BAD_JSON, E_BAD_REQUEST, E_BAD_INSTANCE, E_BAD_PATH, E_TOO_LARGE, E_UNSUPPORTED_VERSION,
    E_NOT_FOUND, E_PERMISSION, E_IO, E_SIZE_MISMATCH, E_CHECKSUM_MISMATCH, E_STREAM, E_TIMEOUT,
    E_BECOME, E_BECOME_TIMEOUT, E_SPAWN, E_ABORTED, E_INTERRUPTED, E_BUSY, E_EXPIRED, E_INTERNAL, E_NO_RESPONDERS, E_EXECUTOR_LOST, E_CONNECT,
    E_TARGET_UNREACHABLE, E_HOST_KEY, E_TARGET_AUTH, E_ACCOUNT, E_PAYLOAD_MISSING,
)
# Errors that mean "the host could not be reached" (Ansible: unreachable) rather than "the task failed".
UNREACHABLE_CODES = (E_NO_RESPONDERS, E_EXECUTOR_LOST, E_CONNECT, E_TARGET_UNREACHABLE, E_HOST_KEY, E_TARGET_AUTH,
                     E_BECOME_TIMEOUT, E_INTERRUPTED)
SSH_STAGES = ("tcp_connect", "handshake", "host_key", "auth", "session", "sftp")

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
# Text that means a template variable was never substituted (``${ZONE}``, ``{{ zone }}``): an instance id like
# that would address nobody, as in the incident where callers asked for an instance id their executor did not serve.
_UNRENDERED_RE = re.compile(r"(\$\{|\$[A-Za-z_]|\{\{|\}\}|\{%|%\(|<no value>)")


class WireError(Exception):
    """A protocol-level failure with a machine-readable code."""

    def __init__(self, code: str, message: str, details: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}

    def to_dict(self) -> Dict[str, Any]:
        return {"v": PROTOCOL_VERSION, "code": self.code, "message": self.message, "details": self.details}

    @classmethod
    def from_dict(cls, data: Any) -> "WireError":
        if not isinstance(data, dict):
            return cls(E_INTERNAL, "malformed error reply: %r" % (data,))
        details = data.get("details")
        return cls(str(data.get("code") or E_INTERNAL), str(data.get("message") or "unknown error"),
                   details if isinstance(details, dict) else {})

    def __str__(self) -> str:
        return "%s: %s" % (self.code, self.message)


def validate_instance_id(value: Any, allow_all: bool = False) -> str:
    """Return the instance id, or raise WireError(bad_instance) saying what is wrong with it."""
    if not isinstance(value, str):
        raise WireError(E_BAD_INSTANCE, "instance id must be a string, got %s" % type(value).__name__)
    if value == ALL_INSTANCES:
        if allow_all:
            return value
        raise WireError(E_BAD_INSTANCE, "instance id '*' (all instances) can only be served, not addressed")
    if not value or not value.strip():
        raise WireError(E_BAD_INSTANCE, "instance id is empty")
    if len(value.encode("utf-8")) > 128:
        raise WireError(E_BAD_INSTANCE, "instance id is longer than 128 bytes: %r" % value)
    if _UNRENDERED_RE.search(value):
        raise WireError(E_BAD_INSTANCE, "instance id %r looks like an unrendered variable or template; "
                                        "set the real instance id (for example 'default' or a zone name)" % value)
    for char in value:
        if char.isspace() or ord(char) < 32 or char in ".*>":
            raise WireError(E_BAD_INSTANCE, "instance id %r contains %r; whitespace, control characters, "
                                            "'.', '*' and '>' are not allowed in a NATS subject token" % (value, char))
    return value


def validate_namespace(value: Any) -> str:
    """A namespace is one or more dot-separated tokens of letters, digits, '_' and '-'."""
    if not isinstance(value, str) or not value:
        raise WireError(E_BAD_REQUEST, "namespace must be a non-empty string")
    for token in value.split("."):
        if not _TOKEN_RE.match(token):
            raise WireError(E_BAD_REQUEST, "namespace %r is invalid: use dot-separated tokens of "
                                           "letters, digits, '_' and '-'" % value)
    return value


def validate_inbox_prefix(value: Any) -> str:
    """An inbox prefix is one or more dot-separated tokens of letters, digits, '_' and '-' (no wildcards)."""
    if not isinstance(value, str) or not _PREFIX_RE.match(value):
        raise WireError(E_BAD_REQUEST, "inbox prefix %r is invalid: use dot-separated tokens of letters, digits, "
                                       "'_' and '-' (no wildcards), for example '_INBOX.controller'" % (value,))
    return value


# JetStream key-value and Object Store bucket names (a bucket is the stream KV_<name> or OBJ_<name>)
BUCKET_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def bucket_problems(name: Any, where: str = "bucket name") -> List[str]:
    """[] for a valid bucket name, else the one problem with it (``where`` names the option or field)."""
    if isinstance(name, str) and BUCKET_RE.match(name):
        return []
    return ["%s %r is invalid: a bucket name has letters, digits, '_' and '-' only" % (where, name)]


def validate_bucket(name: Any, where: str = "bucket name") -> str:
    """Return the bucket name or raise WireError(bad_request) saying what is wrong with it."""
    problems = bucket_problems(name, where)
    if problems:
        raise WireError(E_BAD_REQUEST, problems[0])
    return name


def default_bucket(namespace: str) -> str:
    """The Object Store bucket executor_transfer uses by default: the namespace, dots as '_'."""
    return namespace.replace(".", "_")


# Probes register in a JetStream key-value bucket: one key per probe (its node id, which is also the instance
# id its executor serves), holding its latest record; the bucket's TTL expires probes that went silent.
_PROBE_ID_RE = re.compile(r"^[A-Za-z0-9_=-]+$")
REGISTRY_SUFFIX = "_registry"
REGISTRY_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the record's times (started, last_seen), UTC


# Every request an executor accepts or refuses is recorded on <namespace>.audit.<instance id>, kept by the JetStream
# stream <namespace>_audit (dots as '_'), which the nats_server role creates.
AUDIT_SUFFIX = "_audit"


def audit_stream(namespace: str) -> str:
    """The JetStream stream holding the audit trail of a namespace."""
    return default_bucket(namespace) + AUDIT_SUFFIX


def audit_subject(namespace: str, instance_id: str = "*") -> str:
    """The subject an executor records requests for ``instance_id`` on (``*``: all of them, for the stream)."""
    return "%s.audit.%s" % (namespace, instance_id)


def registry_bucket(namespace: str) -> str:
    """The key-value bucket probes register in: ``<namespace>_registry``, dots as '_'."""
    return default_bucket(namespace) + REGISTRY_SUFFIX


def validate_probe_id(value: Any) -> str:
    """A probe's node id: an instance id that is also a key-value key (ASCII letters, digits, '_', '=', '-')."""
    validate_instance_id(value)
    if value == "*" or not _PROBE_ID_RE.match(value):
        raise WireError(E_BAD_INSTANCE, "probe node id %r is invalid: ASCII letters, digits, '_', '=' and '-' only "
                                        "(it is the probe's key in the registry bucket)" % value)
    return value


def registry_subject(namespace: str, node_id: str) -> str:
    """The subject a probe publishes its registration and heartbeats to: its key of the registry bucket."""
    return "$KV.%s.%s" % (registry_bucket(namespace), validate_probe_id(node_id))


def subject(namespace: str, op: str, instance_id: Optional[str]) -> str:
    """The subject an executor serving ``instance_id`` listens on for ``op``."""
    if op not in OPERATIONS:
        raise ValueError("unknown operation %r" % op)
    return "%s.%s.%s" % (namespace, op, instance_id)
