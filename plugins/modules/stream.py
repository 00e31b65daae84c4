#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: stream
short_description: Manage JetStream streams
description:
  - Creates, updates or deletes a JetStream stream so that it has the settings given.
  - Only the options that are set are managed; a stream's other settings stay as they are (on creation they
    take the server's defaults). A setting NATS cannot change on an existing stream (O(storage), moving to or
    from O(retention=workqueue)) fails with the reason instead of deleting data.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.storage
  - natsops.fleet.attributes
options:
  name:
    description: Stream name (no spaces, C(.), C(*) or C(>)).
    type: str
    required: true
  state:
    description: V(present) creates or updates the stream; V(absent) deletes it with its messages.
    type: str
    choices: [present, absent]
    default: present
  subjects:
    description: Subjects the stream captures (wildcards allowed).
    type: list
    elements: str
  description:
    description: Free text shown by C(nats stream info).
    type: str
  retention:
    description: When messages are removed; V(limits) by the limits below, V(interest) once every consumer has them,
      V(workqueue) once one consumer acknowledged them.
    type: str
    choices: [limits, interest, workqueue]
  max_msgs:
    description: Most messages kept (-1 unlimited).
    type: int
  max_age:
    description: Oldest message kept, in seconds or as C(90s), C(2m30s), C(24h), C(7d) (0 unlimited).
    type: str
  max_msg_size:
    description: Largest message accepted, in bytes (-1 unlimited).
    type: int
  max_msgs_per_subject:
    description: Messages kept per subject (-1 unlimited; 1 keeps the last value of each subject).
    type: int
  discard:
    description: At a limit, drop V(old) messages or refuse V(new) ones.
    type: str
    choices: [old, new]
  duplicate_window:
    description: How long message ids (C(Nats-Msg-Id)) are remembered to drop duplicates; seconds or C(2m), C(1h).
    type: str
  allow_direct:
    description: Allow direct get from any replica (fast reads of the last message of a subject).
    type: bool
  deny_delete:
    description: Refuse deleting single messages.
    type: bool
  deny_purge:
    description: Refuse purging the stream.
    type: bool
"""

EXAMPLES = r"""
- name: Probe heartbeats, the last one of each host, for a week, on three servers
  natsops.fleet.stream:
    servers: tls://nats.example.com:4222
    creds: /etc/natsops/controller.creds
    name: natsops_probes
    subjects: [natsops.probe.heartbeat.*]
    max_msgs_per_subject: 1
    max_age: 7d
    replicas: 3
  delegate_to: localhost

- name: Orders, deduplicated for two minutes
  natsops.fleet.stream:
    name: ORDERS
    subjects: [orders.>]
    storage: file
    max_bytes: 10G
    duplicate_window: 2m

- name: Gone
  natsops.fleet.stream:
    name: OLD
    state: absent
"""

RETURN = r"""
stream:
  description: The stream's settings after the task (API names; durations in nanoseconds); empty when absent.
  returned: always
  type: dict
  sample: {"name": "ORDERS", "subjects": ["orders.>"], "retention": "limits", "storage": "file", "num_replicas": 1,
           "max_age": 0, "duplicate_window": 120000000000}
state:
  description: Messages, bytes and sequence numbers of the stream (not in check mode for a new stream).
  returned: when the stream exists
  type: dict
  sample: {"messages": 20, "bytes": 1420, "first_seq": 1, "last_seq": 20, "consumer_count": 1}
changed_settings:
  description: The settings the task changed (or would change), by option name.
  returned: always
  type: list
  elements: str
  sample: [max_age, replicas]
"""

from typing import Any, Dict

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._common import argument_spec
from ansible_collections.natsops.fleet.plugins.module_utils._resources import (
    STORAGE_OPTIONS, Outcome, ResourceError, SettingsView, changes, check_name, duration_ns, ensure_absent, ensure_created,
    ensure_resource, ensure_updated, replicas, size_bytes,
)

# option -> the stream configuration field of the JetStream API
_FIELDS = {"subjects": "subjects", "description": "description", "retention": "retention", "storage": "storage",
           "replicas": "num_replicas", "max_msgs": "max_msgs", "max_bytes": "max_bytes", "max_age": "max_age",
           "max_msg_size": "max_msg_size", "max_msgs_per_subject": "max_msgs_per_subject", "discard": "discard",
           "duplicate_window": "duplicate_window", "allow_direct": "allow_direct", "deny_delete": "deny_delete",
           "deny_purge": "deny_purge"}


def wanted_config(params: Dict[str, Any]) -> Dict[str, Any]:
    """The managed settings in the API's form (None: not managed)."""
    wanted = {api: params[option] for option, api in _FIELDS.items()}
    wanted["max_bytes"] = size_bytes(params["max_bytes"], "max_bytes")
    wanted["max_age"] = duration_ns(params["max_age"], "max_age")
    wanted["duplicate_window"] = duration_ns(params["duplicate_window"], "duplicate_window")
    replicas(wanted["num_replicas"])
    return wanted


def _refuse_immutable(name: str, before: Dict[str, Any], wanted: Dict[str, Any]) -> None:
    if wanted["storage"] is not None and before.get("storage") != wanted["storage"]:
        raise ResourceError("the storage of stream %s cannot change (%s -> %s); create a new stream and move the "
                            "messages, or delete this one (state: absent) first" % (name, before.get("storage"), wanted["storage"]))
    moving = [r for r in (before.get("retention"), wanted["retention"]) if r is not None]
    if wanted["retention"] is not None and before.get("retention") != wanted["retention"] and "workqueue" in moving:
        raise ResourceError("the retention of stream %s cannot change from %s to %s" % (name, before.get("retention"), wanted["retention"]))


def _state(info: Any) -> Dict[str, Any]:
    state = info.state
    return {"messages": state.messages, "bytes": state.bytes, "first_seq": state.first_seq, "last_seq": state.last_seq,
            "consumer_count": state.consumer_count}


def _view(params: Dict[str, Any]) -> SettingsView:
    """The stream's settings by option name, durations and sizes in the units of ``params``."""
    return SettingsView(_FIELDS, params, durations=("max_age", "duplicate_window"), sizes=("max_bytes",))


async def ensure(nc: Any, params: Dict[str, Any], check_mode: bool) -> Outcome:
    """Bring the stream to the wanted state; returns (changed, result, diff)."""
    import nats.js.errors  # pylint: disable=import-outside-toplevel
    from nats.js.api import StreamConfig  # pylint: disable=import-outside-toplevel
    js = nc.jetstream()
    name = params["name"]
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        info = None
    before = info.config.as_dict() if info else None
    view = _view(params)
    if params["state"] == "absent":
        shown = dict(view.show(before, managed_only=False), name=name) if before else None
        return await ensure_absent("stream", before, check_mode, lambda: js.delete_stream(name), shown=shown)
    wanted = wanted_config(params)
    if before is None:
        if not wanted["subjects"]:
            wanted["subjects"] = None  # NATS then captures the subject named like the stream
        config = {k: v for k, v in wanted.items() if v is not None}
        config["name"] = name
        return await ensure_created("stream", config, check_mode, lambda c: js.add_stream(StreamConfig.from_response(dict(c))),
                                    view, _state)
    _refuse_immutable(name, before, wanted)
    changed = changes(before, wanted)
    after = dict(before)
    after.update((k, wanted[k]) for k in changed)
    return await ensure_updated("stream", info, after, changed, check_mode, lambda c: js.update_stream(StreamConfig.from_response(c)),
                                view, _state)


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            subjects=dict(type="list", elements="str"),
            description=dict(type="str"),
            retention=dict(type="str", choices=["limits", "interest", "workqueue"]),
            max_msgs=dict(type="int"),
            max_age=dict(type="str"),
            max_msg_size=dict(type="int"),
            max_msgs_per_subject=dict(type="int"),
            discard=dict(type="str", choices=["old", "new"]),
            duplicate_window=dict(type="str"),
            allow_direct=dict(type="bool"),
            deny_delete=dict(type="bool"),
            deny_purge=dict(type="bool"),
            **STORAGE_OPTIONS,
        ),
        supports_check_mode=True,
    )
    try:  # a bad name, size or duration fails before anything connects
        check_name(module.params["name"], "stream name")
        wanted_config(module.params)
    except ResourceError as exc:
        module.fail_json(msg=exc.message)
    ensure_resource(module, lambda nc: ensure(nc, module.params, module.check_mode))


if __name__ == "__main__":
    main()
