# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit trail: every request this executor accepts or refuses, as one JSON record on
``<namespace>.audit.<instance id>``, kept by the JetStream stream ``<namespace>_audit``.

Records are published by a background task from a bounded queue, so auditing never holds up a job; a full queue
drops records and counts them (discovery stats ``audit_dropped``). No secret is ever part of a record: no
password, key, passphrase or become password; no stdin (module arguments travel there); the command line of a
no_log task is replaced; environment values whose names look secret are replaced.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import shlex
from typing import Any, Dict, Optional

from natsops_executor._wire.messages import ExecRequest, FetchRequest, PutRequest, Request, TransferRequest
from natsops_executor._wire.names import audit_stream, audit_subject

log = logging.getLogger("natsops_executor")

QUEUE_SIZE = 1000
REDACTED = "<redacted>"
NO_LOG = "<no_log>"
_SECRET_NAME = re.compile(r"(?i)pass|secret|token|key|cred|auth|cookie|session|private")


def _when() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def describe_request(req: Optional[Request]) -> Dict[str, Any]:
    """What a record says about a request, secrets left out."""
    if req is None:
        return {}
    out: Dict[str, Any] = {"id": req.id, "target": req.target.where() if req.target else ""}
    if isinstance(req, ExecRequest):
        if req.no_log:
            out["command"] = NO_LOG
        else:
            out["command"] = req.command if req.command is not None else shlex.join(req.argv or [])
            if req.env:
                out["env"] = {k: REDACTED if _SECRET_NAME.search(k) else v for k, v in req.env.items()}
        out.update(cwd=req.cwd, become=bool(req.become), pty=req.pty, timeout=req.timeout)
    elif isinstance(req, (PutRequest, FetchRequest)):
        out["path"] = req.path
    elif isinstance(req, TransferRequest):
        out.update(path=req.path, check=req.check, source=(
            "%s/%s" % (req.source.bucket, req.source.object) if req.source.object else req.source.path))
    return out


class AuditTrail:
    """Publishes audit records with JetStream acknowledgements, in the background."""

    def __init__(self, nc: Any, namespace: str, executor: str) -> None:
        self.nc = nc
        self.namespace = namespace
        self.executor = executor
        self.stream = audit_stream(namespace)
        self.recorded = 0
        self.dropped = 0
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._task: Optional[asyncio.Future] = None
        self._warned: Optional[str] = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._publish())

    def record(self, instance: str, op: str, verdict: str, req: Optional[Request] = None, **fields: Any) -> None:
        """Queue one record: the request (described without secrets), the verdict (ok, failed, refused) and what
        else the caller gives (signer, code, message, rc, duration, bytes)."""
        doc = {"time": _when(), "executor": self.executor, "instance": instance, "op": op, "verdict": verdict}
        doc.update(describe_request(req))
        doc.update((k, v) for k, v in fields.items() if v is not None)
        if isinstance(doc.get("message"), str):
            doc["message"] = doc["message"][:300]
        try:
            self._queue.put_nowait((audit_subject(self.namespace, instance), doc))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _publish(self) -> None:
        import nats.errors  # pylint: disable=import-outside-toplevel
        js = self.nc.jetstream()
        while True:
            subject, doc = await self._queue.get()
            try:
                await js.publish(subject, json.dumps(doc, sort_keys=True, ensure_ascii=False).encode("utf-8"), timeout=5)
                self.recorded += 1
                self._warned = None
            except nats.errors.NoRespondersError:
                self.dropped += 1
                self._warn("the audit stream %s does not exist: records are dropped until it does (the natsops.fleet."
                           "nats_server role creates it; or natsops.fleet.stream name=%s subjects=%s)"
                           % (self.stream, self.stream, audit_subject(self.namespace, ">")))
            except Exception as exc:  # pylint: disable=broad-except
                self.dropped += 1
                self._warn("cannot record to the audit stream %s: %s" % (self.stream, exc or type(exc).__name__))

    def _warn(self, message: str) -> None:
        if self._warned != message:
            log.warning("%s", message)
            self._warned = message

    async def stop(self, grace: float = 5.0) -> None:
        """Publish what is queued (for up to ``grace`` seconds), then stop."""
        deadline = asyncio.get_running_loop().time() + grace
        while not self._queue.empty() and asyncio.get_running_loop().time() < deadline and self._task and not self._task.done():
            await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()

    def stats(self) -> Dict[str, int]:
        return {"audit_recorded": self.recorded, "audit_dropped": self.dropped}
