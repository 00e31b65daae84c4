# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The natsops wire contract: subjects, message framing, request schemas, error codes.

This module (with ``names.py``, whose names it re-exports) is the ONE definition of the protocol
spoken between callers (the ``natsops.fleet.nats`` connection plugin and the modules) and ``natsops-executor``.
The executor wheel ships this very file (see pyproject.toml); docs/protocol.md
describes it for humans. Standard library only, Python 3.8+ syntax.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from .names import (  # re-exported, the contract is names + messages  # noqa: F401  pylint: disable=unused-import
    ALL_INSTANCES, DEFAULT_NAMESPACE, ERROR_CODES, E_ABORTED, E_BAD_INSTANCE, E_BAD_JSON, E_BAD_PATH, E_BAD_REQUEST,
    E_BECOME, E_CHECKSUM_MISMATCH, E_CONNECT, E_EXECUTOR_LOST, E_INTERNAL, E_IO, E_NOT_FOUND, E_NO_RESPONDERS,
    E_PERMISSION, E_SIZE_MISMATCH, E_SPAWN, E_STREAM, E_TIMEOUT, E_TOO_LARGE, E_UNSUPPORTED_VERSION, OPERATIONS,
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
MAX_EXEC_STDIN = 256 * 1024 * 1024     # module payloads; files go through put
MAX_CHUNK = 512 * 1024
MIN_CHUNK = 16 * 1024
FRAME_OVERHEAD = 8 * 1024              # room for headers and the reply subject
DEFAULT_WINDOW = 8                     # un-acknowledged stream messages in flight
DEFAULT_KEEPALIVE = 1.0                # seconds between executor keepalives
LIVENESS_FACTOR = 5                    # a caller gives up after this many silent intervals
MIN_LIVENESS = 3.0


def chunk_size(max_payload):
    """Bytes of data per stream message for a server with this max_payload."""
    return max(MIN_CHUNK, min(MAX_CHUNK, int(max_payload) - FRAME_OVERHEAD))


def liveness_timeout(keepalive):
    """How long a caller waits in silence before it declares the executor lost."""
    return max(MIN_LIVENESS, keepalive * LIVENESS_FACTOR)


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def sha256_of(handle, block=1 << 20):
    """The SHA-256 (hex) of what an open binary file (or file-like object) yields from here on, read in blocks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(block), b""):
        digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- framing

def pack(kind, document=None, attachment=b"", **headers):
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


def _header_name(key):
    return {"seq": H_SEQ, "stream": H_STREAM}.get(key, key)


def kind_of(headers):
    return (headers or {}).get(H_KIND, "")


def unpack(headers, body, max_json=MAX_REQUEST_JSON):
    """Split a message into (document, attachment); raise WireError on malformed input."""
    headers = headers or {}
    raw_len = headers.get(H_JSON_LENGTH)
    if raw_len is None:
        json_part, attachment = body, b""
    else:
        try:
            length = int(raw_len)
        except ValueError:
            raise WireError(E_BAD_REQUEST, "header %s is not an integer: %r" % (H_JSON_LENGTH, raw_len))
        if length < 0 or length > len(body):
            raise WireError(E_BAD_REQUEST, "header %s=%d does not fit a body of %d bytes" % (H_JSON_LENGTH, length, len(body)))
        json_part, attachment = body[:length], body[length:]
    if len(json_part) > max_json:
        raise WireError(E_TOO_LARGE, "request document is %d bytes; the limit is %d" % (len(json_part), max_json))
    try:
        document = json.loads(json_part.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(E_BAD_JSON, "body is not valid UTF-8 JSON: %s" % exc)
    if not isinstance(document, dict):
        raise WireError(E_BAD_JSON, "body must be a JSON object, got %s" % type(document).__name__)
    return document, attachment


def parse_seq(headers):
    raw = (headers or {}).get(H_SEQ)
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise WireError(E_STREAM, "stream message without a valid %s header: %r" % (H_SEQ, raw))


def error_message(code, message, details=None):
    """(headers, body) of an error reply."""
    return pack(KIND_ERROR, WireError(code, message, details).to_dict())


# ---------------------------------------------------------------- request schemas
# Each field: (accepted types, required, default). Unknown fields are an error, so a
# typo never silently falls back to a default.

_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_BOOL = (bool,)
_DICT = (dict,)
_LIST = (list,)

_COMMON = {
    "v": (_INT, True, None),
    "op": (_STR, True, None),
    "id": (_STR, True, None),
    "reply_to": (_STR, True, None),
    "keepalive": (_NUM, False, DEFAULT_KEEPALIVE),
}

SCHEMAS = {
    OP_EXEC: dict(_COMMON, **{
        "command": (_STR, False, None),        # run as [shell, "-c", command]
        "argv": (_LIST, False, None),          # or an argument vector
        "shell": (_STR, False, "/bin/sh"),
        "cwd": (_STR, False, None),
        "env": (_DICT, False, None),
        "timeout": (_NUM, False, 0),           # seconds; 0 = no limit
        "stdin": (_DICT, False, None),         # {"size": n, "sha256": hex}; inline bytes ride as attachment
        "become": (_DICT, False, None),        # {"success", "prompt", "password", "timeout"}
        "pty": (_BOOL, False, False),
        "target": (_DICT, False, None),        # SSH mode: run on this host through the executor (_TARGET_SCHEMA)
    }),
    OP_PUT: dict(_COMMON, **{
        "path": (_STR, True, None),
        "size": (_INT, True, None),
        "sha256": (_STR, True, None),
        "mode": (_INT, False, None),
        "target": (_DICT, False, None),
    }),
    OP_FETCH: dict(_COMMON, **{
        "path": (_STR, True, None),
        "target": (_DICT, False, None),
    }),
    OP_TRANSFER: dict(_COMMON, **{
        "source": (_DICT, True, None),         # _SOURCE_SCHEMA: an Object Store object or a file on the executor host
        "path": (_STR, True, None),            # where it lands (on the executor host, or on the target)
        "sha256": (_STR, False, None),         # the content the caller expects; compared before anything is fetched
        "mode": (_INT, False, None),
        "check": (_BOOL, False, False),        # only report whether it would change
        "target": (_DICT, False, None),
    }),
}

_SOURCE_SCHEMA = {
    "bucket": (_STR, False, None),
    "object": (_STR, False, None),
    "path": (_STR, False, None),
}
BUCKET_RE = re.compile(r"^[a-zA-Z0-9_-]+$")

_BECOME_SCHEMA = {
    "success": (_STR, True, None),
    "prompt": (_STR, False, None),     # a regular expression matched at the start of an output line
    "password": (_STR, False, None),
    "timeout": (_NUM, False, 10),
}

# SSH mode. Credentials: an identity configured on the executor, by name (preferred: no secret travels),
# or a password / PEM private key in the request (BK-Lite parity); none = the executor's default identity.
_TARGET_SCHEMA = {
    "host": (_STR, True, None),
    "port": (_INT, False, 22),
    "user": (_STR, True, None),
    "identity": (_STR, False, None),
    "password": (_STR, False, None),
    "private_key": (_STR, False, None),
    "passphrase": (_STR, False, None),
}
SECRET_TARGET_FIELDS = ("password", "private_key", "passphrase")

_STDIN_SCHEMA = {
    "size": (_INT, True, None),
    "sha256": (_STR, True, None),
}

_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def _check_fields(doc, schema, where):
    problems = []
    out = {}
    for key in doc:
        if key not in schema:
            problems.append("%s: unknown field %r" % (where, key))
    for key, (types, required, default) in schema.items():
        if key not in doc or doc[key] is None:
            if required:
                problems.append("%s: missing field %r" % (where, key))
            out[key] = default
            continue
        val = doc[key]
        # bool is an int in Python: never accept it where a number is meant
        if not isinstance(val, types) or (isinstance(val, bool) and bool not in types):
            problems.append("%s: field %r must be %s, got %s" % (
                where, key, "/".join(t.__name__ for t in types), type(val).__name__))
            continue
        out[key] = val
    return out, problems


def validate_request(op, doc):
    """Return a normalised request for ``op`` or raise WireError listing every problem."""
    if op not in SCHEMAS:
        raise WireError(E_BAD_REQUEST, "unknown operation %r" % (op,))
    req, problems = _check_fields(doc, SCHEMAS[op], op)
    if not problems:
        if req["v"] != PROTOCOL_VERSION:
            raise WireError(E_UNSUPPORTED_VERSION, "protocol version %r is not supported; this side speaks %d"
                            % (req["v"], PROTOCOL_VERSION))
        if req["op"] != op:
            problems.append("field 'op' is %r but the request was sent to the %r subject" % (req["op"], op))
        if not req["id"] or len(req["id"]) > 128:
            problems.append("field 'id' must be 1-128 characters")
        if not req["reply_to"] or any(c.isspace() or c in "*>" for c in req["reply_to"]):
            problems.append("field 'reply_to' must be a plain subject")
        if not 0.1 <= req["keepalive"] <= 60:
            problems.append("field 'keepalive' must be between 0.1 and 60 seconds")
        problems.extend(_OP_CHECKS[op](req))
        if req["target"] is not None:
            problems.extend(_check_target(req, op))
    if problems:
        raise WireError(E_BAD_REQUEST, "; ".join(problems), {"problems": problems})
    return req


def _check_exec(req):
    problems = []
    if (req["command"] is None) == (req["argv"] is None):
        problems.append("exec: give exactly one of 'command' or 'argv'")
    if req["argv"] is not None and (not req["argv"] or not all(isinstance(a, str) for a in req["argv"])):
        problems.append("exec: 'argv' must be a non-empty list of strings")
    if req["env"] is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in req["env"].items()):
        problems.append("exec: 'env' must map strings to strings")
    if req["timeout"] < 0:
        problems.append("exec: 'timeout' must be >= 0")
    if req["cwd"] is not None:
        problems.extend(path_problems(req["cwd"], "exec: 'cwd'"))
    if req["stdin"] is not None:
        stdin, sub = _check_fields(req["stdin"], _STDIN_SCHEMA, "exec.stdin")
        problems.extend(sub)
        if not sub:
            if not 0 <= stdin["size"] <= MAX_EXEC_STDIN:
                problems.append("exec.stdin: size must be 0..%d" % MAX_EXEC_STDIN)
            if not _HEX64_RE.match(stdin["sha256"]):
                problems.append("exec.stdin: sha256 must be 64 lowercase hex digits")
            req["stdin"] = stdin
    if req["become"] is not None:
        become, sub = _check_fields(req["become"], _BECOME_SCHEMA, "exec.become")
        problems.extend(sub)
        if not sub:
            if become["prompt"] is not None:
                try:
                    re.compile(become["prompt"])
                except re.error as exc:
                    problems.append("exec.become: prompt is not a valid regular expression: %s" % exc)
            if not 0 < become["timeout"] <= 600:
                problems.append("exec.become: timeout must be in (0, 600] seconds")
            req["become"] = become
    return problems


def _check_put(req):
    problems = path_problems(req["path"], "put: 'path'")
    if req["size"] < 0:
        problems.append("put: 'size' must be >= 0")
    if not _HEX64_RE.match(req["sha256"]):
        problems.append("put: 'sha256' must be 64 lowercase hex digits")
    if req["mode"] is not None and not 0 <= req["mode"] <= 0o7777:
        problems.append("put: 'mode' must be between 0 and 0o7777")
    return problems


def _check_fetch(req):
    return path_problems(req["path"], "fetch: 'path'")


def object_digest_hex(digest):
    """An Object Store digest ('SHA-256=<base64url>') as 64 hex digits, or None."""
    value = (digest or "").split("=", 1)[1] if "=" in (digest or "") else ""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _check_transfer(req):
    problems = path_problems(req["path"], "transfer: 'path'")
    source, sub = _check_fields(req["source"], _SOURCE_SCHEMA, "transfer.source")
    problems.extend(sub)
    if not sub:
        if (source["object"] is None) == (source["path"] is None):
            problems.append("transfer.source: give exactly one of 'object' (with 'bucket') or 'path'")
        elif source["object"] is not None:
            if not source["bucket"] or not BUCKET_RE.match(source["bucket"]):
                problems.append("transfer.source: 'bucket' must be an Object Store bucket name ([a-zA-Z0-9_-]+)")
            if not source["object"] or "\x00" in source["object"]:
                problems.append("transfer.source: 'object' must be a non-empty name")
        else:
            problems.extend(path_problems(source["path"], "transfer.source: 'path'"))
        req["source"] = source
    if req["sha256"] is not None and not _HEX64_RE.match(req["sha256"]):
        problems.append("transfer: 'sha256' must be 64 lowercase hex digits")
    if req["mode"] is not None and not 0 <= req["mode"] <= 0o7777:
        problems.append("transfer: 'mode' must be between 0 and 0o7777")
    return problems


def _check_target(req, op):
    target, problems = _check_fields(req["target"], _TARGET_SCHEMA, "%s.target" % op)
    if problems:
        return problems
    host = target["host"]
    if not host or len(host) > 255 or any(c.isspace() or ord(c) < 32 for c in host) or host.startswith("-"):
        problems.append("%s.target: 'host' must be a host name or address, got %r" % (op, host))
    if not 0 < target["port"] < 65536:
        problems.append("%s.target: 'port' must be 1..65535" % op)
    if not target["user"] or any(c.isspace() or ord(c) < 32 for c in target["user"]):
        problems.append("%s.target: 'user' must be a user name" % op)
    if target["identity"] is not None and (target["password"] is not None or target["private_key"] is not None):
        problems.append("%s.target: give an executor 'identity' or a password/private_key, not both" % op)
    req["target"] = target
    return problems


def redact_target(target):
    """The target as it may be logged: secrets replaced by a marker."""
    if not target:
        return target
    return dict((k, "<redacted>" if k in SECRET_TARGET_FIELDS and v is not None else v) for k, v in target.items())


_OP_CHECKS = {OP_EXEC: _check_exec, OP_PUT: _check_put, OP_FETCH: _check_fetch, OP_TRANSFER: _check_transfer}


def path_problems(path, where):
    """Paths on the wire are absolute, normalised and free of '..' and NUL: no traversal tricks."""
    if not path.startswith("/"):
        return ["%s must be an absolute path, got %r" % (where, path)]
    if "\x00" in path:
        return ["%s contains a NUL byte" % where]
    parts = path.split("/")
    if ".." in parts or "." in parts[1:]:
        return ["%s must not contain '.' or '..' components: %r" % (where, path)]
    return []


# ---------------------------------------------------------------- discovery

def executor_metadata(namespace, instances, hostname, version, mode="agent", ssh=False, bklite=False):
    """The metadata an executor publishes in its $SRV INFO (values must be strings)."""
    return {
        "namespace": namespace,
        "instances": json.dumps(list(instances), ensure_ascii=False),
        "hostname": hostname,
        "executor_version": version,
        "protocol": str(PROTOCOL_VERSION),
        "mode": mode,
        "ssh": "true" if ssh else "false",   # can run requests that carry a target (SSH mode)
        "bklite": "true" if bklite else "false",  # also serves the BK-Lite subjects (wire/bklite.py)
    }


def parse_executor_info(info):
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
        "version": meta.get("executor_version", info.get("version", "")),
        "protocol": meta.get("protocol", ""),
        "mode": meta.get("mode", ""),
        "ssh": meta.get("ssh") == "true",
        "bklite": meta.get("bklite") == "true",
        "subjects": [e.get("subject") for e in info.get("endpoints") or [] if isinstance(e, dict)],
    }


def serves(record, instance_id):
    """True if an executor record serves this instance id."""
    return instance_id in record["instances"] or ALL_INSTANCES in record["instances"]
