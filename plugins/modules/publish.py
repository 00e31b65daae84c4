#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: publish
short_description: Publish a message on NATS, core or JetStream (with a dedupe id)
description:
  - Publishes one message with optional headers.
  - With O(jetstream=true) the message must land in a stream and the task waits for the stream's
    acknowledgement. With O(msg_id) JetStream drops a repeat within the stream's duplicate window, and the task
    reports C(changed=false) for it, so a re-run of the play does not publish twice.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.message
options:
  jetstream:
    description: Publish to JetStream and wait for the stream's acknowledgement.
    type: bool
    default: false
  msg_id:
    description: Message id (C(Nats-Msg-Id)) JetStream uses to drop duplicates. Implies O(jetstream=true).
    type: str
  stream:
    description: The stream expected to store the message (JetStream fails the publish otherwise). Implies O(jetstream=true).
    type: str
attributes:
  check_mode:
    support: full
    description: Nothing is published; the task reports that it would publish.
  diff_mode:
    support: none
    description: A message has no before and after.
"""

EXAMPLES = r"""
- name: Announce a maintenance window to whoever listens
  natsops.fleet.publish:
    subject: ops.maintenance
    json: {zone: 管理网, start: "2026-12-01T02:00:00Z", minutes: 30}
    headers: {Source: ansible}

- name: Record the deployment once, even when the play runs again
  natsops.fleet.publish:
    subject: deploy.events
    data: "release 1.4.2 rolled out"
    msg_id: "deploy-1.4.2"
    stream: DEPLOYS
"""

RETURN = r"""
stream:
  description: The stream that stored the message.
  returned: with JetStream
  type: str
  sample: DEPLOYS
seq:
  description: Its sequence number in the stream (of the first copy, for a duplicate).
  returned: with JetStream
  type: int
  sample: 42
duplicate:
  description: JetStream had the O(msg_id) already and dropped this copy.
  returned: with JetStream
  type: bool
  sample: false
size:
  description: Payload bytes.
  returned: always
  type: int
  sample: 57
"""

from typing import Any, Dict

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._common import argument_spec
from ansible_collections.natsops.fleet.plugins.module_utils._resources import message_options, payload_of, run


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            jetstream=dict(type="bool", default=False),
            msg_id=dict(type="str"),
            stream=dict(type="str"),
            **message_options()),
        mutually_exclusive=[("data", "json")],
        supports_check_mode=True,
    )
    params = module.params
    subject, payload, headers = payload_of(module)
    jetstream = params["jetstream"] or bool(params["msg_id"]) or bool(params["stream"])
    if module.check_mode:
        module.exit_json(changed=True, size=len(payload))

    async def publish(nc: Any) -> Dict[str, Any]:
        if not jetstream:
            await nc.publish(subject, payload, headers=headers)
            await nc.flush(timeout=params["connect_timeout"])
            return {"changed": True, "size": len(payload)}
        if params["msg_id"]:
            headers["Nats-Msg-Id"] = params["msg_id"]
        ack = await nc.jetstream().publish(subject, payload, timeout=params["connect_timeout"], stream=params["stream"],
                                           headers=headers or None)
        return {"changed": not ack.duplicate, "stream": ack.stream, "seq": ack.seq, "duplicate": bool(ack.duplicate),
                "size": len(payload)}

    module.exit_json(**run(module, publish))


if __name__ == "__main__":
    main()
