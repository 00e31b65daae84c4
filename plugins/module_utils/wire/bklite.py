# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The BK-Lite nats-executor wire contract, defined once for both ends.

``natsops-executor --bklite-compat`` serves these subjects so that an unmodified BK-Lite server
can drive it; the modules' ``protocol: bklite`` drives BK-Lite's own executors with them.
Subjects are ``<op>.<method>.<instance_id>`` (no namespace prefix); a request is
``{"args": [<request>], "kwargs": {}}`` of which only ``args[0]`` counts; a reply is one JSON
object: ``result`` (string), ``instance_id``, ``success`` and, on failure, ``code`` and ``error``
(plus ``stage``/``category`` for ssh.execute). docs/protocol.md describes it for humans.
Standard library only, Python 3.8+ syntax.
"""

from __future__ import annotations

import json
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

LOCAL_EXECUTE = "local.execute"
SSH_EXECUTE = "ssh.execute"
DOWNLOAD_LOCAL = "download.local"
DOWNLOAD_REMOTE = "download.remote"
UPLOAD_REMOTE = "upload.remote"
UNZIP_LOCAL = "unzip.local"
HEALTH_CHECK = "health.check"
METHODS = (LOCAL_EXECUTE, DOWNLOAD_LOCAL, UNZIP_LOCAL, HEALTH_CHECK, SSH_EXECUTE, DOWNLOAD_REMOTE, UPLOAD_REMOTE)
SSH_METHODS = (SSH_EXECUTE, DOWNLOAD_REMOTE, UPLOAD_REMOTE)

# reply codes
INVALID_REQUEST = "invalid_request"
DEPENDENCY_FAILURE = "dependency_failure"
EXECUTION_FAILURE = "execution_failure"
TIMEOUT = "timeout"

# ssh.execute failure stages and categories
STAGE_TCP_CONNECT = "tcp_connect"
STAGE_SSH_DIAL = "ssh_dial"
STAGE_LEGACY_RETRY = "legacy_retry"
STAGE_SESSION_CREATE = "session_create"
STAGE_COMMAND_RUN = "command_run"
CATEGORY_NETWORK = "network"
CATEGORY_COMPATIBILITY = "compatibility"
CATEGORY_AUTH = "auth"
CATEGORY_DEPENDENCY = "dependency"
CATEGORY_REMOTE_TIMEOUT = "remote_timeout"
CATEGORY_REMOTE_EXIT = "remote_exit"

SHELLS = ("sh", "bash", "bat", "cmd", "powershell", "pwsh")
OUTPUT_LIMIT = 1024 * 1024                 # stdout + stderr together, in bytes
TRUNCATION_MARKER = "\n...[output truncated]"
DEFAULT_BUCKET = "bklite"                  # BK-Lite's Object Store bucket (its deployment namespace)
MSG_BAD_PAYLOAD = "invalid request payload"
MSG_NO_ARGS = "missing request arguments"

# Request fields: name -> JSON type. Go decodes strictly by type ("port": "22" fails the whole
# request), ignores unknown fields and leaves missing ones at their zero value.
_S, _I, _U, _B, _M = "string", "int", "uint", "bool", "map"
REQUEST_FIELDS = {
    LOCAL_EXECUTE: {"command": _S, "execute_timeout": _I, "shell": _S, "env": _M, "execution_id": _S,
                    "stream_logs": _B, "stream_log_topic": _S},
    SSH_EXECUTE: {"command": _S, "execute_timeout": _I, "host": _S, "port": _U, "user": _S, "password": _S,
                  "private_key": _S, "passphrase": _S, "connection_test": _B, "execution_id": _S,
                  "stream_logs": _B, "stream_log_topic": _S},
    DOWNLOAD_LOCAL: {"bucket_name": _S, "file_key": _S, "file_name": _S, "target_path": _S, "execute_timeout": _I},
    DOWNLOAD_REMOTE: {"bucket_name": _S, "file_key": _S, "file_name": _S, "target_path": _S, "local_path": _S,
                      "host": _S, "port": _U, "user": _S, "password": _S, "private_key": _S, "passphrase": _S,
                      "fast_fail": _B, "execute_timeout": _I},
    UPLOAD_REMOTE: {"source_path": _S, "target_path": _S, "host": _S, "port": _U, "user": _S, "password": _S,
                    "private_key": _S, "passphrase": _S, "execute_timeout": _I},
    UNZIP_LOCAL: {"zip_path": _S, "dest_dir": _S},
    HEALTH_CHECK: {"execute_timeout": _I},
}
SECRET_FIELDS = ("password", "private_key", "passphrase")
_ZERO = {_S: "", _I: 0, _U: 0, _B: False, _M: None}


class BkliteError(Exception):
    """A failure reply: code, message and, for ssh.execute, stage and category; ``result`` is what
    the reply's ``result`` field carries (the message itself unless output was captured)."""

    def __init__(self, code: str, message: str, stage: Optional[str] = None, category: Optional[str] = None,
                 result: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.stage = stage
        self.category = category
        self.result = message if result is None else result


def subject(method: str, instance_id: Optional[str]) -> str:
    """The subject a BK-Lite executor serving ``instance_id`` listens on for ``method``."""
    if method not in METHODS:
        raise ValueError("unknown BK-Lite method %r" % (method,))
    return "%s.%s" % (method, instance_id)


def method_of(subj: str) -> Tuple[str, str]:
    """'local.execute.<id>' -> ('local.execute', '<id>')."""
    op, method, instance_id = subj.split(".", 2)
    return "%s.%s" % (op, method), instance_id


# ---------------------------------------------------------------- requests

def pack_request(request: Dict[str, Any]) -> bytes:
    """The envelope a BK-Lite server sends."""
    return json.dumps({"args": [request], "kwargs": {}}, ensure_ascii=False).encode("utf-8")


def _matches(kind: str, value: Any) -> bool:
    if kind == _S:
        return isinstance(value, str)
    if kind == _B:
        return isinstance(value, bool)
    if kind in (_I, _U):
        return isinstance(value, int) and not isinstance(value, bool) and (kind == _I or value >= 0)
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def unpack_request(method: str, body: bytes) -> Dict[str, Any]:
    """The request object (args[0]) with every known field present (zero values for missing ones);
    BkliteError(invalid_request) with BK-Lite's own messages for a bad envelope or wrongly typed field."""
    try:
        envelope = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        raise BkliteError(INVALID_REQUEST, MSG_BAD_PAYLOAD) from None
    if envelope is not None and not isinstance(envelope, dict):
        raise BkliteError(INVALID_REQUEST, MSG_BAD_PAYLOAD)
    args = (envelope or {}).get("args")
    kwargs = (envelope or {}).get("kwargs")
    if args is not None and not isinstance(args, list):
        raise BkliteError(INVALID_REQUEST, MSG_BAD_PAYLOAD)
    if not args or (kwargs is not None and not isinstance(kwargs, dict)):
        raise BkliteError(INVALID_REQUEST, MSG_NO_ARGS if method == LOCAL_EXECUTE else MSG_BAD_PAYLOAD)
    doc = args[0]
    if not isinstance(doc, dict):
        raise BkliteError(INVALID_REQUEST, MSG_BAD_PAYLOAD)
    fields = REQUEST_FIELDS[method]
    req = {}
    for name, kind in fields.items():
        value = doc.get(name)
        if value is None:
            req[name] = _ZERO[kind]
        elif _matches(kind, value):
            req[name] = value
        else:
            raise BkliteError(INVALID_REQUEST, MSG_BAD_PAYLOAD)
    return req


def check_execute(method: str, req: Dict[str, Any]) -> Dict[str, Any]:
    """BK-Lite's validation of local.execute / ssh.execute, in its order and words."""
    if not req["command"].strip():
        raise BkliteError(INVALID_REQUEST, "command is required")
    if method == SSH_EXECUTE:
        if not req["host"].strip():
            raise BkliteError(INVALID_REQUEST, "host is required")
        if not req["user"].strip():
            raise BkliteError(INVALID_REQUEST, "user is required")
        if req["port"] <= 0:
            raise BkliteError(INVALID_REQUEST, "port must be greater than 0")
    if req["execute_timeout"] <= 0:
        raise BkliteError(INVALID_REQUEST, "execute timeout must be greater than 0")
    if method == LOCAL_EXECUTE:
        shell = req["shell"].strip().lower() or "sh"
        if shell not in SHELLS:
            raise BkliteError(INVALID_REQUEST, "unsupported shell: %s" % req["shell"].strip())
        req["shell"] = shell
    return req


def shell_argv(shell: str, command: str) -> List[str]:
    """How BK-Lite runs a local.execute command with each shell (on a POSIX executor)."""
    if shell in ("bat", "cmd"):
        return ["cmd", "/c", command]
    if shell in ("powershell", "pwsh"):
        return [shell, "-Command", command]
    return [shell, "-c", command]


def ssh_fields(target: Dict[str, Any]) -> Dict[str, Any]:
    """BK-Lite's SSH request fields (host, port, user, credentials) for one of our targets (messages.Target's fields)."""
    fields = {"host": target["host"], "port": target.get("port", 22), "user": target["user"]}
    fields.update((name, target[name]) for name in SECRET_FIELDS if target.get(name))
    return fields


def redact(req: Dict[str, Any]) -> Dict[str, Any]:
    """The request as it may be logged."""
    return {k: "<redacted>" if k in SECRET_FIELDS and v else v for k, v in req.items()}


# ---------------------------------------------------------------- replies

def reply(instance_id: str, result: str = "", error: Optional[BkliteError] = None) -> Dict[str, Any]:
    """A reply document, fields in BK-Lite's order; ``error`` is a BkliteError for a failure."""
    if error is None:
        return {"result": result, "instance_id": instance_id, "success": True}
    doc = {"result": error.result, "instance_id": instance_id, "success": False, "code": error.code,
           "error": error.message}
    if error.stage:
        doc["stage"] = error.stage
    if error.category:
        doc["category"] = error.category
    return doc


def health_reply(instance_id: str, now: Optional[float] = None) -> Dict[str, Any]:
    return {"success": True, "status": "ok", "instance_id": instance_id,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}


def encode(doc: Dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def capped_output(stdout: bytes, stderr: bytes, dropped: bool = False) -> str:
    """``result`` of a command: stdout then stderr, at most OUTPUT_LIMIT bytes, marked when cut."""
    data = bytes(stdout) + bytes(stderr)
    if len(data) > OUTPUT_LIMIT or dropped:
        keep = OUTPUT_LIMIT - len(TRUNCATION_MARKER)
        return data[:keep].decode("utf-8", "ignore") + TRUNCATION_MARKER
    return data.decode("utf-8", "replace")


def fit(doc: Dict[str, Any], max_payload: int) -> bytes:
    """The encoded reply, its ``result`` cut (and marked) further if the whole would not fit in one
    NATS message: BK-Lite's 1 MiB cap alone does not fit a default 1 MiB max_payload."""
    body = encode(doc)
    while len(body) > max_payload and doc.get("result"):
        data = doc["result"].encode("utf-8")
        if data.endswith(TRUNCATION_MARKER.encode("utf-8")):
            data = data[:-len(TRUNCATION_MARKER)]
        keep = max(len(data) - (len(body) - max_payload) - 64, 0)
        doc = dict(doc, result=data[:keep].decode("utf-8", "ignore") + TRUNCATION_MARKER)
        body = encode(doc)
    return body


def stream_event(execution_id: str, stream: str, line: str, now: Optional[float] = None) -> Dict[str, Any]:
    """One output line as published on ``stream_log_topic``."""
    return {"execution_id": execution_id, "stream": stream, "line": line,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}


class LineEvents:
    """Output as BK-Lite's stream events: split into lines (CR/LF trimmed, empty ones skipped), each
    published as a stream_event by ``publish(subject, body)`` (a coroutine function, e.g. nc.publish).
    A failed publish is reported to ``on_error`` and never stops the command."""

    def __init__(self, publish: Callable[[str, bytes], Awaitable[Any]], topic: str, execution_id: Optional[str],
                 on_error: Optional[Callable[[Exception], Any]] = None) -> None:
        self.publish = publish
        self.topic = topic
        self.execution_id = execution_id or ""
        self.on_error = on_error
        self.partial = {"stdout": b"", "stderr": b""}

    async def feed(self, stream: str, data: bytes) -> None:
        lines = (self.partial[stream] + bytes(data)).split(b"\n")
        self.partial[stream] = lines.pop()
        for line in lines:
            await self._send(stream, line)

    async def flush(self) -> None:
        for stream in ("stdout", "stderr"):
            line, self.partial[stream] = self.partial[stream], b""
            await self._send(stream, line)

    async def _send(self, stream: str, line: bytes) -> None:
        line = line.rstrip(b"\r\n")
        if not line:
            return
        try:
            await self.publish(self.topic, encode(stream_event(self.execution_id, stream, line.decode("utf-8", "replace"))))
        except Exception as exc:  # pylint: disable=broad-except
            if self.on_error is not None:
                self.on_error(exc)


def parse_reply(body: bytes) -> Dict[str, Any]:
    """A reply as a dict; BkliteError(invalid_request) when it is not a JSON object."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BkliteError(INVALID_REQUEST, "the BK-Lite executor's reply is not JSON: %s" % exc) from None
    if not isinstance(doc, dict):
        raise BkliteError(INVALID_REQUEST, "the BK-Lite executor's reply is not a JSON object")
    return doc


def exit_code(doc: Dict[str, Any]) -> Optional[int]:
    """The exit status a failed execute reply reports in its text (BK-Lite has no rc field), or None."""
    text = doc.get("error") or ""
    for marker in ("exit code ", "exited with status "):
        at = text.find(marker)
        if at >= 0:
            digits = text[at + len(marker):].split(":")[0].split()[0] if text[at + len(marker):].strip() else ""
            try:
                return int(digits)
            except ValueError:
                return None
    return None
