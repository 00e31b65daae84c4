#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: probe_info
short_description: The probe registry as data
description:
  - Reads the records probes keep in the registry bucket (C(<namespace>_registry), one key per probe, named by its
    node id) and returns them, each with its age and whether it is stale.
  - A probe is a C(natsops-executor --register) on the host itself; its record names the host, its addresses,
    OS, architecture, zone and probe version, and when it was last seen.
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.registry
  - natsops.fleet.attributes.info_module
options:
  include_stale:
    description: Return stale probes too (with C(stale=true)).
    type: bool
    default: true
  node_ids:
    description: Only these probes.
    type: list
    elements: str
  query:
    description: A JMESPath expression applied to the list of records; its result is returned as RV(query_result).
    type: str
requirements:
  - jmespath (for O(query))
"""

EXAMPLES = r"""
- name: Every probe of zone-a that is alive
  natsops.fleet.probe_info:
    servers: tls://nats.example.com:4222
    creds: /etc/natsops/controller.creds
    include_stale: false
    query: "[?zone=='zone-a'].node_id"
  delegate_to: localhost
  register: alive

- name: Fail when a host of the inventory has no live probe
  ansible.builtin.assert:
    that: groups['web'] | difference(alive.query_result) | length == 0
"""

RETURN = r"""
probes:
  description: The records, sorted by node id.
  returned: always
  type: list
  elements: dict
  sample: [{"node_id": "web1", "hostname": "web1", "addresses": ["10.0.0.5"], "os": {"id": "debian", "version": "12"},
            "arch": "x86_64", "zone": "zone-a", "probe_version": "0.1.0", "last_seen": "2026-11-23T19:00:00.000000Z",
            "age": 4.2, "stale": false, "revision": 1234}]
count:
  description: Number of records returned.
  returned: always
  type: int
stale:
  description: Node ids of the stale probes among them.
  returned: always
  type: list
  elements: str
bucket:
  description: The registry bucket read.
  returned: always
  type: str
query_result:
  description: The result of O(query).
  returned: when O(query) is set
  type: raw
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._registry import STALE_AFTER, read_registry
from ansible_collections.natsops.fleet.plugins.module_utils._common import argument_spec, compile_query
from ansible_collections.natsops.fleet.plugins.module_utils._resources import run
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import registry_bucket


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(bucket=dict(type="str"), stale_after=dict(type="float", default=STALE_AFTER),
                                    include_stale=dict(type="bool", default=True), node_ids=dict(type="list", elements="str"),
                                    query=dict(type="str")),
        supports_check_mode=True,
    )
    params = module.params
    compiled = compile_query(module)
    bucket = params["bucket"] or registry_bucket(params["namespace"])

    records = run(module, lambda nc: read_registry(nc, bucket, params["stale_after"]))
    if params["node_ids"] is not None:
        records = [r for r in records if r["node_id"] in params["node_ids"]]
    if not params["include_stale"]:
        records = [r for r in records if not r["stale"]]
    result = {"changed": False, "probes": records, "count": len(records), "bucket": bucket,
              "stale": [r["node_id"] for r in records if r["stale"]]}
    if compiled is not None:
        result["query_result"] = compiled.search(records)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
