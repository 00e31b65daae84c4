# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The natsops wire contract: message framing, sizes and timings, discovery metadata.

With ``names.py`` (subjects, instance ids, error codes; re-exported here) and ``messages.py`` (the typed
requests and replies) this is the ONE definition of the protocol spoken between callers (the
``natsops.fleet.nats`` connection plugin and the modules) and ``natsops-executor``. The executor wheel ships
these very files (see pyproject.toml); docs/protocol.md describes them for humans. Standard library only,
Python 3.8+ syntax.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Tuple

from .names import (  # re-exported: callers take the names and the framing from here  # noqa: F401  pylint: disable=unused-import
    ALL_INSTANCES, DEFAULT_NAMESPACE, ERROR_CODES, E_ABORTED, E_ACCOUNT, E_INTERRUPTED, E_BUSY, E_EXPIRED, E_BAD_INSTANCE, E_BAD_JSON,
    E_BAD_PATH, E_BAD_REQUEST,
    E_BECOME, E_BECOME_TIMEOUT, E_CHECKSUM_MISMATCH, E_CONNECT, E_EXECUTOR_LOST, E_INTERNAL, E_IO, E_NOT_FOUND, E_NO_RESPONDERS,
    E_PAYLOAD_MISSING, E_PERMISSION, E_SIZE_MISMATCH, E_SPAWN, E_STREAM, E_TIMEOUT, E_TOO_LARGE, E_UNSUPPORTED_VERSION, OPERATIONS,
    OP_EXEC, OP_FETCH, OP_PUT, OP_TRANSFER, PROTOCOL_VERSION, QUEUE_GROUP, SERVICE_NAME, WireError, subject, validate_instance_id,
    validate_namespace, E_TARGET_UNREACHABLE, E_HOST_KEY, E_TARGET_AUTH, UNREACHABLE_CODES, SSH_STAGES,
)

# NATS headers used by the protocol (ASCII tokens).
H_KIND = "Natsops-Kind"
H_SEQ = "Natsops-Seq"
H_STREAM = "Natsops-Stream"
H_JSON_LENGTH = "Natsops-Json-Length"
H_STATUS = "Status"  # set by nats-server itself, e.g. 503 = no responders

# Message kinds (value of the Natsops-Kind header).
KIND_REQUEST = "request"
KIND_ACCEPTED = "accepted"
KIND_DATA = "data"
KIND_KEEPALIVE = "keepalive"
KIND_RESULT = "result"
KIND_ERROR = "error"

STREAM_STDOUT = "stdout"
STREAM_STDERR = "stderr"
STREAM_FILE = "file"

# Sizes and timings.
MAX_REQUEST_JSON = 256 * 1024          # the JSON part of any request
MAX_JSON_DEPTH = 16                    # nesting of any message's JSON document (requests need 3)
MAX_CHUNK = 512 * 1024
MIN_CHUNK = 16 * 1024
FRAME_OVERHEAD = 8 * 1024              # room for headers and the reply subject
DEFAULT_WINDOW = 8                     # un-acknowledged stream messages in flight
LIVENESS_FACTOR = 5                    # a caller gives up after this many silent intervals
MIN_LIVENESS = 3.0


def chunk_size(max_payload: int) -> int:
    """Bytes of data per stream message for a server with this max_payload."""
    return max(MIN_CHUNK, min(MAX_CHUNK, int(max_payload) - FRAME_OVERHEAD))


def liveness_timeout(keepalive: float) -> float:
    """How long a caller waits in silence before it declares the executor lost."""
    return max(MIN_LIVENESS, keepalive * LIVENESS_FACTOR)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of(handle: BinaryIO, block: int = 1 << 20) -> str:
    """The SHA-256 (hex) of what an open binary file (or file-like object) yields from here on, read in blocks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(block), b""):
        digest.update(chunk)
    return digest.hexdigest()


def object_digest_hex(digest: Optional[str]) -> Optional[str]:
    """An Object Store digest ('SHA-256=<base64url>') as 64 hex digits, or None."""
    value = (digest or "").split("=", 1)[1] if "=" in (digest or "") else ""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        return None
    return raw.hex() if len(raw) == 32 else None


# ---------------------------------------------------------------- framing

def pack(kind: str, document: Optional[Mapping[str, Any]] = None, attachment: bytes = b"",
         **headers: Any) -> Tuple[Dict[str, str], bytes]:
    """Build (headers, body) for a message: JSON document first, then optional raw bytes."""
    hdrs = {H_KIND: kind}
    for key, val in headers.items():
        if val is not None:
            hdrs[_header_name(key)] = str(val)
    if document is None:
        return hdrs, bytes(attachment)
    encoded = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if attachment:
        hdrs[H_JSON_LENGTH] = str(len(encoded))
        return hdrs, encoded + bytes(attachment)
    return hdrs, encoded


def _header_name(key: str) -> str:
    return {"seq": H_SEQ, "stream": H_STREAM}.get(key, key)


def kind_of(headers: Optional[Mapping[str, str]]) -> str:
    return (headers or {}).get(H_KIND, "")


def unpack(headers: Optional[Mapping[str, str]], body: bytes,
           max_json: int = MAX_REQUEST_JSON) -> Tuple[Dict[str, Any], bytes]:
    """Split a message into (document, attachment); raise WireError on malformed input."""
    headers = headers or {}
    raw_len = headers.get(H_JSON_LENGTH)
    if raw_len is None:
        json_part, attachment = body, b""
    else:
        try:
            length = int(raw_len)
        except ValueError:
            raise WireError(E_BAD_REQUEST, "header %s is not an integer: %r" % (H_JSON_LENGTH, raw_len)) from None
        if length < 0 or length > len(body):
            raise WireError(E_BAD_REQUEST, "header %s=%d does not fit a body of %d bytes" % (H_JSON_LENGTH, length, len(body)))
        json_part, attachment = body[:length], body[length:]
    if len(json_part) > max_json:
        raise WireError(E_TOO_LARGE, "request document is %d bytes; the limit is %d" % (len(json_part), max_json))
    try:
        document = json.loads(json_part.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise WireError(E_BAD_JSON, "body nests deeper than %d levels" % MAX_JSON_DEPTH) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(E_BAD_JSON, "body is not valid UTF-8 JSON: %s" % exc) from None
    if not isinstance(document, dict):
        raise WireError(E_BAD_JSON, "body must be a JSON object, got %s" % type(document).__name__)
    if _depth(document) > MAX_JSON_DEPTH:
        raise WireError(E_BAD_JSON, "body nests deeper than %d levels" % MAX_JSON_DEPTH)
    return document, attachment


def _no_constant(name: str) -> Any:
    """json.loads takes NaN and Infinity, which are not JSON: refuse them."""
    raise ValueError("%s is not a JSON number" % name)


def _depth(document: Any) -> int:
    """How deeply a decoded JSON value nests (iteratively: no recursion on hostile input)."""
    deepest = 0
    pending = [(document, 1)]
    while pending:
        value, level = pending.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                pending.extend((item, level + 1) for item in value if isinstance(item, (dict, list)))
    return deepest


def parse_seq(headers: Optional[Mapping[str, str]]) -> int:
    raw = (headers or {}).get(H_SEQ)
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise WireError(E_STREAM, "stream message without a valid %s header: %r" % (H_SEQ, raw)) from None


def error_message(code: str, message: str, details: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, str], bytes]:
    """(headers, body) of an error reply."""
    return pack(KIND_ERROR, WireError(code, message, details).to_dict())


# ---------------------------------------------------------------- discovery

def executor_metadata(namespace: str, instances: List[str], hostname: str, version: str, mode: str = "agent",
                      ssh: bool = False, bklite: bool = False, account: str = "", warm: bool = False,
                      payload_cache: bool = False) -> Dict[str, str]:
    """The metadata an executor publishes in its $SRV INFO (values must be strings)."""
    return {
        "account": account,                  # the account commands start as on its own host (before any become)
        "namespace": namespace,
        "instances": json.dumps(list(instances), ensure_ascii=False),
        "hostname": hostname,
        "executor_version": version,
        "protocol": str(PROTOCOL_VERSION),
        "mode": mode,
        "ssh": "true" if ssh else "false",   # can run requests that carry a target (SSH mode)
        "bklite": "true" if bklite else "false",  # also serves the BK-Lite subjects (wire/bklite.py)
        "warm": "true" if warm else "false",  # runs pipelined module runs from warm interpreters (its stats count them)
        "payload_cache": "true" if payload_cache else "false",  # keeps exec stdin blobs by digest (stdin_blobs)
    }


def parse_executor_info(info: Any) -> Optional[Dict[str, Any]]:
    """Turn a $SRV INFO reply (dict) into a flat executor record, or None if it is not ours."""
    if not isinstance(info, dict) or info.get("name") != SERVICE_NAME:
        return None
    meta = info.get("metadata") or {}
    try:
        instances = json.loads(meta.get("instances", "[]"))
    except ValueError:
        instances = []
    return {
        "id": info.get("id"),
        "namespace": meta.get("namespace", DEFAULT_NAMESPACE),
        "instances": [i for i in instances if isinstance(i, str)],
        "hostname": meta.get("hostname", ""),
        "account": meta.get("account", ""),
        "version": meta.get("executor_version", info.get("version", "")),
        "protocol": meta.get("protocol", ""),
        "mode": meta.get("mode", ""),
        "ssh": meta.get("ssh") == "true",
        "bklite": meta.get("bklite") == "true",
        "warm": meta.get("warm") == "true",
        "payload_cache": meta.get("payload_cache") == "true",
        "subjects": [e.get("subject") for e in info.get("endpoints") or [] if isinstance(e, dict)],
    }


def serves(record: Mapping[str, Any], instance_id: str) -> bool:
    """True if an executor record serves this instance id."""
    return instance_id in record["instances"] or ALL_INSTANCES in record["instances"]
