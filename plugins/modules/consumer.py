#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: consumer
short_description: Manage durable JetStream consumers
description:
  - Creates, updates or deletes a durable consumer of a JetStream stream so that it has the settings given.
    Without O(deliver_subject) it is a pull consumer; with it, a push consumer.
  - Only the options that are set are managed; the consumer's other settings stay as they are (on creation they take
    the server's defaults). A setting NATS cannot change on an existing consumer (O(ack_policy), O(deliver_policy) and
    its start, O(replay_policy), pull to push or back) fails with the reason and leaves the consumer as it was.
  - In check mode a stream that does not exist yet (an earlier task of the play creates it) counts as a stream
    without consumers; the task reports the consumer it would create and warns.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.attributes
options:
  stream:
    description: The stream the consumer reads.
    type: str
    required: true
  name:
    description: The consumer's durable name (no spaces, C(.), C(*) or C(>)).
    type: str
    required: true
  state:
    description: V(present) creates or updates the consumer; V(absent) deletes it (the stream's messages stay).
    type: str
    choices: [present, absent]
    default: present
  description:
    description: Free text shown by C(nats consumer info).
    type: str
  deliver_subject:
    description: Makes a push consumer that delivers to this subject.
    type: str
  deliver_group:
    description: Queue group of the subscribers sharing a push consumer.
    type: str
  filter_subjects:
    description: Subjects of the stream this consumer receives (wildcards allowed); all when not set.
    type: list
    elements: str
  deliver_policy:
    description: Where delivery starts. V(by_start_sequence) needs O(opt_start_seq), V(by_start_time) needs O(opt_start_time).
    type: str
    choices: [all, last, new, by_start_sequence, by_start_time, last_per_subject]
  opt_start_seq:
    description: First stream sequence to deliver, with O(deliver_policy=by_start_sequence).
    type: int
  opt_start_time:
    description: First time to deliver, RFC 3339 (C(2026-11-23T00:00:00Z)), with O(deliver_policy=by_start_time).
    type: str
  ack_policy:
    description: V(explicit) acknowledges each message, V(all) a message and those before it, V(none) never.
    type: str
    choices: [explicit, all, none]
  ack_wait:
    description:
      - How long a delivered message waits for its acknowledgement before redelivery; seconds or C(30s), C(2m).
      - With a backoff (O(backoff), or the consumer's own when O(backoff) is not given) NATS waits the first backoff
        value instead and stores it as ack_wait. The task compares ack_wait the same way, so it stays idempotent,
        and warns when the ack_wait given differs from the first backoff value, since it would have no effect.
    type: str
  max_deliver:
    description: Most deliveries of one message (-1 unlimited).
    type: int
  backoff:
    description:
      - Waits before each redelivery (seconds or durations), instead of O(ack_wait); needs O(max_deliver) larger than
        its length. The first value is also the wait for the first acknowledgement (NATS stores it as ack_wait).
      - An empty list removes the backoff; give O(ack_wait) with it, or the consumer keeps the first backoff value as ack_wait.
    type: list
    elements: str
  replay_policy:
    description: V(instant) delivers as fast as possible, V(original) at the pace the messages were stored.
    type: str
    choices: [instant, original]
  max_ack_pending:
    description: Most messages delivered and not yet acknowledged (-1 unlimited).
    type: int
  max_waiting:
    description: Most pull requests waiting at once (pull consumers).
    type: int
  headers_only:
    description: Deliver headers and size only, not the payload.
    type: bool
  inactive_threshold:
    description: Delete the consumer after this long without activity; seconds or C(1h) (0 never).
    type: str
  idle_heartbeat:
    description: Heartbeat interval of a push consumer while idle; seconds or C(5s).
    type: str
  flow_control:
    description: Flow control for a push consumer (needs O(idle_heartbeat)).
    type: bool
  replicas:
    description: Copies of the consumer's state in a cluster (0 follows the stream).
    type: int
  metadata:
    description: Your own key/value strings stored with the consumer. The keys nats-server adds itself (C(_nats.*))
      are left out when comparing and showing it.
    type: dict
"""

EXAMPLES = r"""
- name: A work queue reader that retries three times, waiting longer each time (10s for the first acknowledgement)
  natsops.fleet.consumer:
    stream: JOBS
    name: workers
    filter_subjects: [jobs.probe.>]
    ack_policy: explicit
    max_deliver: 4
    backoff: [10s, 1m, 5m]
    max_ack_pending: 100
  delegate_to: localhost

- name: A push consumer for a queue group of services, new messages only
  natsops.fleet.consumer:
    stream: EVENTS
    name: audit
    deliver_subject: deliver.audit
    deliver_group: auditors
    deliver_policy: new

- name: Gone
  natsops.fleet.consumer:
    stream: JOBS
    name: old_workers
    state: absent
"""

RETURN = r"""
consumer:
  description: The consumer's settings after the task (API names; durations in nanoseconds); empty when absent.
  returned: always
  type: dict
  sample: {"durable_name": "workers", "ack_policy": "explicit", "ack_wait": 30000000000, "max_deliver": 4}
state:
  description: Delivery state of the consumer (not in check mode for a new consumer).
  returned: when the consumer exists
  type: dict
  sample: {"num_pending": 12, "num_ack_pending": 3, "num_redelivered": 1, "delivered_stream_seq": 40, "ack_floor_stream_seq": 37}
changed_settings:
  description: The settings the task changed (or would change), by option name.
  returned: always
  type: list
  elements: str
  sample: [max_deliver]
"""

import datetime
from typing import Any, Awaitable, Dict, List, Optional

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._common import argument_spec
from ansible_collections.natsops.fleet.plugins.module_utils._resources import (
    Outcome, ResourceError, SettingsView, changes, check_name, duration_ns, duration_text, ensure_absent, ensure_created,
    ensure_resource, ensure_updated,
)

# option -> the consumer configuration field of the JetStream API
_FIELDS = {"description": "description", "deliver_subject": "deliver_subject", "deliver_group": "deliver_group",
           "deliver_policy": "deliver_policy", "opt_start_seq": "opt_start_seq", "opt_start_time": "opt_start_time",
           "ack_policy": "ack_policy", "ack_wait": "ack_wait", "max_deliver": "max_deliver", "backoff": "backoff",
           "replay_policy": "replay_policy", "max_ack_pending": "max_ack_pending", "max_waiting": "max_waiting",
           "headers_only": "headers_only", "inactive_threshold": "inactive_threshold", "idle_heartbeat": "idle_heartbeat",
           "flow_control": "flow_control", "replicas": "num_replicas", "metadata": "metadata"}
_DURATIONS = ("ack_wait", "inactive_threshold", "idle_heartbeat")
_SERVER_METADATA = "_nats."  # metadata keys nats-server adds itself (its version, API level)
_IMMUTABLE = ("deliver_policy", "opt_start_seq", "opt_start_time", "ack_policy", "replay_policy")


def wanted_config(params: Dict[str, Any]) -> Dict[str, Any]:
    """The managed settings in the API's form (None: not managed)."""
    wanted = {api: params[option] for option, api in _FIELDS.items()}
    for option in _DURATIONS:
        wanted[option] = duration_ns(params[option], option)
    if params["backoff"] is not None:
        wanted["backoff"] = [duration_ns(v, "backoff") for v in params["backoff"]]
    if params["metadata"] is not None:
        wanted["metadata"] = {str(k): str(v) for k, v in params["metadata"].items()}
    filters = params["filter_subjects"]
    wanted["filter_subject"] = filters[0] if filters and len(filters) == 1 else ("" if filters is not None else None)
    wanted["filter_subjects"] = list(filters) if filters and len(filters) > 1 else None
    if params["deliver_policy"] == "by_start_sequence" and not params["opt_start_seq"]:
        raise ResourceError("deliver_policy by_start_sequence needs opt_start_seq")
    if params["deliver_policy"] == "by_start_time" and not params["opt_start_time"]:
        raise ResourceError("deliver_policy by_start_time needs opt_start_time")
    if params["deliver_group"] and not params["deliver_subject"]:
        raise ResourceError("deliver_group is for push consumers: give deliver_subject as well")
    return wanted


def _own_metadata(config: Dict[str, Any]) -> Optional[Dict[str, str]]:
    """The consumer's metadata without the keys nats-server adds itself (None when it has none)."""
    metadata = config.get("metadata")
    return None if metadata is None else {k: v for k, v in metadata.items() if not k.startswith(_SERVER_METADATA)}


def _filters(config: Dict[str, Any]) -> List[str]:
    return config.get("filter_subjects") or ([config["filter_subject"]] if config.get("filter_subject") else [])


def _same(field: str, before: Any, wanted: Any) -> bool:
    if field == "opt_start_time" and before and wanted:
        parse = datetime.datetime.fromisoformat
        try:
            return parse(before.replace("Z", "+00:00")) == parse(wanted.replace("Z", "+00:00"))
        except ValueError:
            return False
    return before == wanted


def _refuse_immutable(name: str, before: Dict[str, Any], wanted: Dict[str, Any]) -> None:
    for field in _IMMUTABLE:
        if wanted[field] is not None and not _same(field, before.get(field), wanted[field]):
            raise ResourceError("the %s of consumer %s cannot change (%s -> %s); delete the consumer (state: absent) and "
                                "create it again" % (field, name, before.get(field), wanted[field]))
    if wanted["deliver_subject"] is not None and not before.get("deliver_subject"):
        raise ResourceError("consumer %s is a pull consumer and cannot become a push consumer; delete it first" % name)


def _state(info: Any) -> Dict[str, Optional[int]]:
    return {"num_pending": info.num_pending, "num_ack_pending": info.num_ack_pending, "num_redelivered": info.num_redelivered,
            "num_waiting": info.num_waiting, "delivered_stream_seq": info.delivered.stream_seq if info.delivered else None,
            "ack_floor_stream_seq": info.ack_floor.stream_seq if info.ack_floor else None}


def _view(params: Dict[str, Any]) -> SettingsView:
    """The consumer's settings by option name, durations in the units of ``params``."""
    return SettingsView(dict(_FIELDS, filter_subjects=("filter_subject", "filter_subjects")), params, durations=_DURATIONS,
                        duration_lists=("backoff",), read={"filter_subjects": _filters, "metadata": _own_metadata})


def normalise_ack_wait(params: Dict[str, Any], wanted: Dict[str, Any], before: Optional[Dict[str, Any]]) -> List[str]:
    """Compare ack_wait as NATS stores it: with a backoff (the one wanted, else the consumer's own) the server
    waits backoff[0] for the first acknowledgement and stores ack_wait = backoff[0], whatever ack_wait was sent.
    A wanted ack_wait that differs is replaced by backoff[0] in ``wanted``; returns the warning that says so
    (empty when there is nothing to say)."""
    backoff = wanted["backoff"] if wanted["backoff"] is not None else (before or {}).get("backoff")
    if not backoff or wanted["ack_wait"] is None or wanted["ack_wait"] == backoff[0]:
        return []
    first = duration_text(backoff[0], params["ack_wait"])
    wanted["ack_wait"] = backoff[0]
    return ["consumer %s: ack_wait %s has no effect with backoff: NATS waits backoff[0] (%s) for the first acknowledgement "
            "and stores that as ack_wait, so the task compares ack_wait as %s; drop ack_wait or set it to %s"
            % (params["name"], params["ack_wait"], first, first, first)]


async def ensure(nc: Any, params: Dict[str, Any], check_mode: bool) -> Outcome:
    """Bring the consumer to the wanted state; returns (changed, result, diff)."""
    import nats.js.errors  # pylint: disable=import-outside-toplevel
    from nats.js.api import ConsumerConfig  # pylint: disable=import-outside-toplevel
    js = nc.jetstream()
    stream, name = params["stream"], params["name"]
    warnings: List[str] = []
    try:
        await js.stream_info(stream)
        stream_exists = True
    except nats.js.errors.NotFoundError as exc:
        if not check_mode:
            raise ResourceError("stream %s does not exist; create it first (natsops.fleet.stream)" % stream) from exc
        stream_exists = False  # an earlier task of the play may create it: shown as a stream without consumers
        warnings.append("stream %s does not exist (yet): check mode shows consumer %s as on a new stream; without --check "
                        "the task fails unless an earlier task creates the stream" % (stream, name))
    info = None
    if stream_exists:
        try:
            info = await js.consumer_info(stream, name)
        except nats.js.errors.NotFoundError:
            info = None
    before = info.config.as_dict() if info else None
    view = _view(params)
    if params["state"] == "absent":
        shown = dict(view.show(before, managed_only=False), stream=stream, name=name) if before else None
        return _warned(await ensure_absent("consumer", before, check_mode, lambda: js.delete_consumer(stream, name), shown=shown),
                       warnings)
    wanted = wanted_config(params)
    warnings += normalise_ack_wait(params, wanted, before)

    def put(config: Dict[str, Any]) -> Awaitable[Any]:  # creates and updates alike
        return js.add_consumer(stream, ConsumerConfig.from_response(dict(config)))

    if before is None:
        config = {k: v for k, v in wanted.items() if v not in (None, "")}
        config.update(name=name, durable_name=name)
        return _warned(await ensure_created("consumer", config, check_mode, put, view, _state), warnings)
    _refuse_immutable(name, before, wanted)
    compared = dict(wanted, filter_subject=None, filter_subjects=None)
    compared_before = dict(before, metadata=_own_metadata(before) or {})  # as NATS stores them: see normalise_ack_wait
    if wanted["backoff"] == []:
        compared_before["backoff"] = before.get("backoff") or []
    changed = changes(compared_before, compared)
    if (wanted["filter_subject"] is not None or wanted["filter_subjects"] is not None) and _filters(before) != (params["filter_subjects"] or []):
        changed.append("filter_subjects")
    after = dict(before)
    after.update((k, wanted[k]) for k in changed if k != "filter_subjects")
    if "filter_subjects" in changed:
        after["filter_subject"], after["filter_subjects"] = wanted["filter_subject"] or None, wanted["filter_subjects"]
    after.setdefault("name", name)
    return _warned(await ensure_updated("consumer", info, after, changed, check_mode, put, view, _state), warnings)


def _warned(outcome: Outcome, warnings: List[str]) -> Outcome:
    changed, result, diff = outcome
    if warnings:
        result["warnings"] = warnings
    return changed, result, diff


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            stream=dict(type="str", required=True),
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            description=dict(type="str"),
            deliver_subject=dict(type="str"),
            deliver_group=dict(type="str"),
            filter_subjects=dict(type="list", elements="str"),
            deliver_policy=dict(type="str", choices=["all", "last", "new", "by_start_sequence", "by_start_time", "last_per_subject"]),
            opt_start_seq=dict(type="int"),
            opt_start_time=dict(type="str"),
            ack_policy=dict(type="str", choices=["explicit", "all", "none"]),
            ack_wait=dict(type="str"),
            max_deliver=dict(type="int"),
            backoff=dict(type="list", elements="str"),
            replay_policy=dict(type="str", choices=["instant", "original"]),
            max_ack_pending=dict(type="int"),
            max_waiting=dict(type="int"),
            headers_only=dict(type="bool"),
            inactive_threshold=dict(type="str"),
            idle_heartbeat=dict(type="str"),
            flow_control=dict(type="bool"),
            replicas=dict(type="int"),
            metadata=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    try:  # a bad name, duration or combination fails before anything connects
        for option in ("stream", "name"):
            check_name(module.params[option], option)
        wanted_config(module.params)
    except ResourceError as exc:
        module.fail_json(msg=exc.message)
    ensure_resource(module, lambda nc: ensure(nc, module.params, module.check_mode))


if __name__ == "__main__":
    main()
