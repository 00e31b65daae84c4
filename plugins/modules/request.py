#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: request
short_description: Send a NATS request and return the reply, with a JMESPath query on JSON replies
description:
  - Sends one request and waits up to O(timeout) seconds for the first reply. A JSON reply is also returned
    parsed, and O(query) selects from it with JMESPath.
  - A request nobody serves fails at once with C(no responders), naming the subject.
  - The service may act on the request, so the module does not run in check mode.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.message
options:
  timeout:
    description: Seconds to wait for the reply.
    type: float
    default: 5
  query:
    description: A JMESPath expression applied to the parsed JSON reply; its outcome is RV(query_result).
    type: str
attributes:
  check_mode:
    support: none
    description: The request could change something on the service's side; the task is skipped in check mode.
  diff_mode:
    support: none
    description: Nothing to compare.
requirements:
  - jmespath (for O(query))
"""

EXAMPLES = r"""
- name: Which instance ids do the executors serve? (NATS micro discovery, JSON)
  natsops.fleet.request:
    subject: $SRV.INFO.natsops-executor
    query: metadata.instances
  register: info

- name: Ask a service, with a header
  natsops.fleet.request:
    subject: inventory.lookup
    json: {host: db1}
    headers: {Tenant: ops}
    timeout: 2
"""

RETURN = r"""
data:
  description: The reply payload as text (invalid UTF-8 replaced).
  returned: always
  type: str
  sample: '{"status": "ok"}'
json:
  description: The reply parsed as JSON.
  returned: when the reply is JSON
  type: raw
  sample: {"status": "ok"}
headers:
  description: The reply's NATS headers.
  returned: always
  type: dict
  sample: {}
query_result:
  description: The outcome of O(query).
  returned: when O(query) is given
  type: raw
  sample: ok
"""

import json
from typing import Any, Dict

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._common import argument_spec, compile_query
from ansible_collections.natsops.fleet.plugins.module_utils._resources import ResourceError, message_options, payload_of, run


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(timeout=dict(type="float", default=5.0), query=dict(type="str"), **message_options()),
        mutually_exclusive=[("data", "json")],
        supports_check_mode=False,
    )
    params = module.params
    compiled = compile_query(module)
    subject, payload, headers = payload_of(module)

    async def request(nc: Any) -> Dict[str, Any]:
        import nats.errors  # pylint: disable=import-outside-toplevel
        try:
            reply = await nc.request(subject, payload, timeout=params["timeout"], headers=headers or None)
        except nats.errors.NoRespondersError as exc:
            raise ResourceError("no responders: nobody serves %r (check the subject and that the service is running)" % subject) from exc
        except nats.errors.TimeoutError as exc:
            raise ResourceError("no reply on %r within %s s" % (subject, params["timeout"])) from exc
        result = {"changed": False, "data": reply.data.decode("utf-8", "replace"), "headers": dict(reply.headers or {})}
        try:
            result["json"] = json.loads(reply.data.decode("utf-8"))
        except ValueError as exc:
            if compiled is not None:
                raise ResourceError("the reply is not JSON, so query cannot apply: %r" % result["data"][:200]) from exc
        if compiled is not None:
            result["query_result"] = compiled.search(result["json"])
        return result

    module.exit_json(**run(module, request))


if __name__ == "__main__":
    main()
