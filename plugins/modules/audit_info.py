#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: audit_info
short_description: Read the executors' audit trail
description:
  - Reads the audit trail of a fleet. Every request an executor accepted or refused is one JSON record in the
    JetStream stream C(<namespace>_audit), on the subject C(<namespace>.audit.<instance id>). A record says when,
    which executor, which instance id and operation, the verdict (C(ok), C(failed) or C(refused)), the job id,
    the signer, the SSH target, the command or path, the error code and message, rc, duration and bytes; never a
    secret (see the protocol's "Audit trail").
  - The records are read with an ordered, ephemeral JetStream consumer that starts at O(since) and reads until it
    has caught up with the stream; O(instance_ids) become the consumer's subject filter, the other filters are
    applied to the records read.
  - Read-only; it never changes anything (the consumer is ephemeral and removed by the server once the module is
    done).
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.attributes.info_module
options:
  stream:
    description: The stream holding the trail; defaults to C(<namespace>_audit) (dots of O(namespace) as C(_)).
    type: str
  instance_ids:
    description:
      - Only the records of these instance ids (the subjects C(<namespace>.audit.<instance id>)), as the filter
        subjects of the consumer (several of them with nats-server 2.10 or later; an older server sends every
        subject, and those not asked for are dropped).
      - The subject is the instance id an executor recorded the request for; an executor may publish only the audit
        subjects of its own instance ids (the least-privilege permissions of the
        P(natsops.fleet.nats_server#role) role).
    type: list
    elements: str
  since:
    description:
      - Where reading starts, by the time the stream stored the records.
      - A duration back from now (seconds, or units such as V(30m), V(1h), V(2h30m), V(7d)); an ISO-8601 time such
        as V(2026-11-29T10:00:00Z), V(2026-11-29T18:00:00+08:00) or V(2026-11-29) (a time without an offset is UTC);
        or V(all) for the whole stream.
    type: str
    default: 24h
  verdicts:
    description: Only records with one of these verdicts.
    type: list
    elements: str
    choices: [ok, failed, refused]
  ops:
    description:
      - Only records of these operations, for example V(exec), V(put), V(fetch), V(transfer), or BK-Lite's
        V(bklite:local.execute), V(bklite:ssh.execute), ...
    type: list
    elements: str
  signer:
    description:
      - Only records of requests signed by this NKey public key (C(U...)); for a refused request, the key it claimed.
    type: str
  limit:
    description:
      - Return the newest O(limit) records that pass the filters (still oldest first); V(0) returns them all.
    type: int
    default: 100
  timeout:
    description:
      - Most seconds to read the trail (at most 3600). A read that has not caught up with the stream by then fails,
        saying how far it got; narrow O(since) or O(instance_ids), or raise this.
    type: float
    default: 60
  query:
    description: A JMESPath expression applied to RV(records); its result is returned as RV(query_result).
    type: str
notes:
  - >-
    Records that are not a JSON object are returned as C({"invalid": true, "raw": ...}) (the first 4096 characters
    of the message), so that nothing in the trail goes unseen. They match no O(verdicts), O(ops) or O(signer) filter.
  - The stream is created by the P(natsops.fleet.nats_server#role) role; or create it with
    M(natsops.fleet.stream) (C(name=natsops_audit), C(subjects=[natsops.audit.>]) for the default namespace).
    Executors drop records (and count them, C(audit_dropped)) while it does not exist.
requirements:
  - jmespath (for O(query))
seealso:
  - module: natsops.fleet.stream
  - module: natsops.fleet.executor_info
"""

EXAMPLES = r"""
- name: What was refused in the last hour, in every zone
  natsops.fleet.audit_info:
    servers: tls://nats.example.com:4222
    creds: /etc/natsops/controller.creds
    since: 1h
    verdicts: [refused]
  delegate_to: localhost
  register: refused

- name: Show them
  ansible.builtin.debug:
    msg: "{{ item.time }} {{ item.instance }} {{ item.op }} {{ item.code }}: {{ item.message }}"
  loop: "{{ refused.records }}"

- name: Every command run in zone 管理网 since the change window opened, as job id and command
  natsops.fleet.audit_info:
    instance_ids: [管理网]
    since: "2026-11-29T22:00:00+08:00"
    ops: [exec]
    limit: 0
    query: "[].{id: id, command: command, verdict: verdict}"
  delegate_to: localhost
  register: window

- name: Fail when somebody else's key ran anything this week
  natsops.fleet.audit_info:
    since: 7d
    verdicts: [ok, failed]
    limit: 0
    query: "[?signer != '{{ controller_public_key }}'] | length(@)"
  delegate_to: localhost
  register: strangers
  failed_when: strangers.query_result > 0
"""

RETURN = r"""
records:
  description:
    - The records that passed the filters, oldest first (at most O(limit), the newest ones), as the executors wrote
      them, each with C(seq) (its sequence number in the stream), C(subject) and C(stored) (when the stream stored
      it, UTC; C(time) is the executor's own clock).
    - >-
      A message that is not a JSON object is C({"invalid": true, "raw": "..."}) with C(seq), C(subject) and C(stored).
  returned: always
  type: list
  elements: dict
  sample:
    - {"time": "2026-11-29T10:00:00.123456Z", "executor": "zone-gw-1", "instance": "管理网", "op": "exec", "verdict": "ok",
       "id": "5f0c1e", "signer": "UA4P...", "target": "root@10.20.0.11:22", "command": "/bin/sh -c 'echo hi'", "rc": 0,
       "bytes_in": 0, "bytes_out": 3, "duration": 0.412, "seq": 1042, "subject": "natsops.audit.管理网",
       "stored": "2026-11-29T10:00:00.124001Z"}
    - {"time": "2026-11-29T10:00:02.000001Z", "executor": "zone-gw-1", "instance": "管理网", "op": "exec",
       "verdict": "refused", "id": "77aa10", "code": "unsigned", "message": "this executor requires signed requests",
       "seq": 1043, "subject": "natsops.audit.管理网", "stored": "2026-11-29T10:00:02.000420Z"}
count:
  description: Number of records returned.
  returned: always
  type: int
  sample: 2
matched:
  description: Number of records that passed the filters, before O(limit) kept the newest ones.
  returned: always
  type: int
  sample: 2
stream:
  description: The stream read.
  returned: always
  type: str
  sample: natsops_audit
start_time:
  description: Where reading started (O(since) as a UTC time); null for O(since=all).
  returned: always
  type: str
  sample: "2026-11-28T10:00:00.000000Z"
query_result:
  description: The result of O(query).
  returned: when O(query) is set
  type: raw
"""

import asyncio
import collections
import datetime
import json
import re
from typing import Any, Callable, Dict, List, Optional, Sequence

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._common import argument_spec, compile_query
from ansible_collections.natsops.fleet.plugins.module_utils._resources import ResourceError, check_name, duration_ns, run
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import (
    WireError, audit_stream, audit_subject, validate_instance_id, validate_namespace,
)

VERDICTS = ("ok", "failed", "refused")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # as the executors write a record's time, UTC
RAW_LIMIT = 4096  # characters of an invalid record that are returned
IDLE = 1.0  # seconds without a message after which the consumer is asked whether anything is left
_ISO_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?\s*(Z|z|[+-]\d{2}:?\d{2})?$")

Record = Dict[str, Any]


def parse_iso_time(text: str) -> Optional[datetime.datetime]:
    """An ISO-8601 date or time as an aware UTC datetime (UTC when it has no offset), or None when it is not one."""
    found = _ISO_RE.match(text.strip())
    if not found:
        return None
    year, month, day, hour, minute, second, fraction, offset = found.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        zone = datetime.timezone.utc
        if offset and offset not in ("Z", "z"):
            digits = offset[1:].replace(":", "")
            delta = datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
            zone = datetime.timezone(-delta if offset[0] == "-" else delta)
        when = datetime.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
                                 micro, tzinfo=zone)
    except ValueError:  # month 13, hour 25, an offset of a day or more, ...
        return None
    return when.astimezone(datetime.timezone.utc)


def start_time(since: Any, now: datetime.datetime) -> Optional[datetime.datetime]:
    """Where reading starts for O(since): ``now`` minus a duration, an ISO-8601 time, or None for ``all``.
    Raises ResourceError for anything else."""
    text = str(since if since is not None else "").strip()
    if text.lower() == "all":
        return None
    when = parse_iso_time(text)
    if when is not None:
        return when
    try:
        back = duration_ns(text, "since") if text else None
    except ResourceError:
        back = None
    if back is None:
        raise ResourceError("since %r is neither a duration (seconds, or 30m, 1h, 2h30m, 7d) nor an ISO-8601 time "
                            "(2026-11-29T10:00:00Z, 2026-11-29T18:00:00+08:00, 2026-11-29) nor 'all'" % (since,))
    return now - datetime.timedelta(microseconds=back // 1000)


def format_time(when: Optional[datetime.datetime]) -> Optional[str]:
    """A datetime as the trail writes times (UTC, microseconds, ``Z``); a naive one is taken as UTC."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc).strftime(TIME_FORMAT)


def consumer_filter(namespace: str, instance_ids: Optional[Sequence[str]]) -> List[str]:
    """The consumer's filter subjects: one audit subject per instance id (in order, once each); [] for all of the
    stream. Raises WireError for a bad namespace or instance id."""
    validate_namespace(namespace)
    return list(dict.fromkeys(audit_subject(namespace, validate_instance_id(i)) for i in instance_ids or ()))


def decode_record(data: bytes) -> Record:
    """A message of the trail as a record; one that is not a JSON object as ``{"invalid": True, "raw": ...}``."""
    text = data.decode("utf-8", "replace")
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if isinstance(record, dict):
        return record
    return {"invalid": True, "raw": text[:RAW_LIMIT]}


def record_filter(verdicts: Optional[Sequence[str]] = None, ops: Optional[Sequence[str]] = None,
                  signer: Optional[str] = None) -> Callable[[Record], bool]:
    """A test a record must pass: its verdict among ``verdicts``, its op among ``ops``, its signer ``signer`` (each
    only when given). An invalid record passes only when no filter is given."""
    wanted = [(key, set(values)) for key, values in (("verdict", verdicts), ("op", ops), ("signer", [signer] if signer else None))
              if values]

    def passes(record: Record) -> bool:
        return all(not record.get("invalid") and record.get(key) in values for key, values in wanted)

    return passes


class Newest:
    """The newest ``limit`` records offered (all of them for 0), oldest first, and how many were offered."""

    def __init__(self, limit: int) -> None:
        self.kept: collections.deque = collections.deque(maxlen=limit or None)
        self.offered = 0

    def offer(self, record: Record) -> None:
        self.offered += 1
        self.kept.append(record)

    def records(self) -> List[Record]:
        return list(self.kept)


def missing_stream_message(stream: str, namespace: str) -> str:
    return ("the audit stream %s does not exist, so nothing was recorded (executors drop their records until it does). "
            "The natsops.fleet.nats_server role creates it; or create it with natsops.fleet.stream: name=%s subjects=[%s]"
            % (stream, stream, audit_subject(namespace, ">")))


async def read_trail(nc: Any, stream: str, subjects: List[str], start: Optional[datetime.datetime], passes: Callable[[Record], bool],
                     newest: Newest, timeout: float, namespace: str) -> None:
    """Read the stream from ``start`` (None: its beginning) with an ordered consumer filtered on ``subjects`` until it
    caught up with the stream as it was when reading began, offering each record that ``passes`` to ``newest``.
    Raises ResourceError when the stream does not exist or reading takes more than ``timeout`` seconds."""
    import nats.errors  # pylint: disable=import-outside-toplevel
    import nats.js.errors  # pylint: disable=import-outside-toplevel
    from nats.js.api import ConsumerConfig, DeliverPolicy  # pylint: disable=import-outside-toplevel

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        raise ResourceError(missing_stream_message(stream, namespace)) from None
    last = info.state.last_seq  # caught up: a message at or after it, or nothing pending
    if not info.state.messages:
        return
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME if start else DeliverPolicy.ALL,
                            opt_start_time=format_time(start),  # RFC 3339 text, which nats-py sends unchanged
                            filter_subjects=subjects if len(subjects) > 1 else None)
    try:
        # the subject is the filter for one instance id; "" (no filter) for all of them or several (filter_subjects),
        # as nats-py before 2.12 sets filter_subject from it even when filter_subjects is given
        sub = await js.subscribe(subjects[0] if len(subjects) == 1 else "", stream=stream, ordered_consumer=True, config=config)
    except nats.js.errors.BadRequestError as exc:
        raise ResourceError("JetStream refused to read %s from stream %s: %s; the stream holds %s (check namespace and "
                            "stream)" % (", ".join(subjects) or "all subjects", stream, exc.description or exc,
                                         ", ".join(info.config.subjects or []) or "no subjects of its own"),
                            code=exc.code, err_code=exc.err_code) from None
    # nats-py keeps this config to recreate the ordered consumer after a gap, from the next sequence; a start time
    # left in it would make the server refuse that consumer (a start time and a start sequence)
    config.opt_start_time = None
    wanted = set(subjects)
    seen = 0  # stream sequence of the last message read
    delivered = 0  # its consumer sequence
    read = 0
    try:
        if await _caught_up(sub, delivered, nats.js.errors.NotFoundError):
            return  # nothing matches (the filter, or nothing since the start time)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ResourceError("reading the audit stream %s did not catch up within %s s: %d records read, up to "
                                    "sequence %d of %d; narrow since or instance_ids, or raise timeout"
                                    % (stream, timeout, read, seen, last))
            try:
                msg = await sub.next_msg(timeout=min(remaining, IDLE))
            except nats.errors.TimeoutError:
                if await _caught_up(sub, delivered, nats.js.errors.NotFoundError):
                    return
                continue
            meta = msg.metadata
            seen, delivered = meta.sequence.stream, meta.sequence.consumer
            read += 1
            # (a server before 2.10 ignores filter_subjects and sends every subject: those asked for are kept)
            if not wanted or msg.subject in wanted:
                record = decode_record(msg.data or b"")
                if passes(record):
                    record.update(seq=seen, subject=msg.subject, stored=format_time(meta.timestamp))
                    newest.offer(record)
            if meta.num_pending == 0 or seen >= last:
                return
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # pylint: disable=broad-except  # the connection is closing anyway
            pass


async def _caught_up(sub: Any, delivered: int, not_found: type) -> bool:
    """Whether the consumer has nothing left to deliver and nothing on the way after the message of consumer sequence
    ``delivered`` (0: none yet). Asked at the start and when no message came for a while: nothing matched at all, or
    the last match lies before the stream's end. (The consumer's delivered stream sequence moves on over the
    messages its filter skips; its consumer sequence counts only what it sent.)"""
    try:
        info = await sub.consumer_info()
    except not_found:  # the ordered consumer is being recreated after a gap
        return False
    return info.num_pending == 0 and (info.delivered.consumer_seq or 0) <= delivered


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            stream=dict(type="str"),
            instance_ids=dict(type="list", elements="str"),
            since=dict(type="str", default="24h"),
            verdicts=dict(type="list", elements="str", choices=list(VERDICTS)),
            ops=dict(type="list", elements="str"),
            signer=dict(type="str"),
            limit=dict(type="int", default=100),
            timeout=dict(type="float", default=60.0),
            query=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    compiled = compile_query(module)
    try:  # bad input fails before anything connects
        subjects = consumer_filter(params["namespace"], params["instance_ids"])
        start = start_time(params["since"], datetime.datetime.now(datetime.timezone.utc))
        stream = check_name(params["stream"] or audit_stream(params["namespace"]), "stream")
        if params["limit"] < 0:
            raise ResourceError("limit must be 0 (no limit) or more, got %d" % params["limit"])
        if not 0 < params["timeout"] <= 3600:
            raise ResourceError("timeout must be more than 0 and at most 3600 seconds, got %s" % params["timeout"])
    except WireError as exc:
        module.fail_json(msg=exc.message, code=exc.code)
    except ResourceError as exc:
        module.fail_json(msg=exc.message)

    newest = Newest(params["limit"])
    passes = record_filter(params["verdicts"], params["ops"], params["signer"])
    run(module, lambda nc: read_trail(nc, stream, subjects, start, passes, newest, params["timeout"], params["namespace"]))
    records = newest.records()
    result = {"changed": False, "records": records, "count": len(records), "matched": newest.offered, "stream": stream,
              "start_time": format_time(start)}
    if compiled is not None:
        result["query_result"] = compiled.search(records)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
