#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: executor_info
short_description: Discover the natsops executors online
description:
  - Asks every C(natsops-executor) reachable through NATS who it is, through NATS micro service discovery
    (C($SRV.INFO) and C($SRV.STATS)). It returns the instance ids each serves, its host, version, protocol,
    whether it can reach hosts over SSH, and its load.
  - Answers "who serves this instance id?" before a playbook needs it; see C(playbooks/diagnose.yml).
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats.module
  - natsops.fleet.trust.module
  - natsops.fleet.attributes.info_module
options:
  instance_id:
    description: Only executors that serve this instance id (directly or with C(*)), in O(namespace).
    type: str
  wait:
    description: Seconds to collect replies; collection ends earlier once replies stop coming.
    type: float
    default: 0.5
  stats:
    description: Also ask each executor for its load (running jobs, completed, failed, load average, SSH pool).
    type: bool
    default: true
  query:
    description:
      - A JMESPath expression applied to RV(executors); the outcome is returned as RV(query_result).
    type: str
  protocol:
    description:
      - C(natsops) discovers C(natsops-executor) processes (all of them, or those serving O(instance_id)).
      - C(bklite) asks BK-Lite executors serving O(instance_id) (required then) for C(health.check); BK-Lite has no
        discovery, so only the O(instance_id) asked for is seen. Each record then has C(instance_id), C(status),
        C(timestamp) and C(protocol=bklite).
    type: str
    choices: [natsops, bklite]
    default: natsops
requirements:
  - jmespath (for O(query))
"""

EXAMPLES = r"""
- name: Who serves the zone 管理网?
  natsops.fleet.executor_info:
    servers: tls://nats.example.com:4222
    creds: /etc/natsops/controller.creds
    instance_id: 管理网
  delegate_to: localhost
  register: zone

- name: Fail early when nobody does
  ansible.builtin.assert:
    that: zone.executors | length > 0
    fail_msg: "no executor serves 管理网; online: {{ zone.instances | list }}"

- name: Host names of the executors with free slots
  natsops.fleet.executor_info:
    query: "[?load.running < load.max_jobs].hostname"
  delegate_to: localhost
  register: free
"""

RETURN = r"""
executors:
  description: Executors online (all namespaces unless O(instance_id) is given), sorted by namespace and host.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Service id of this executor process.
      type: str
    namespace:
      description: Its subject prefix.
      type: str
    instances:
      description: Instance ids it serves (C(*) = all).
      type: list
      elements: str
    hostname:
      description: Its host (its C(--name)).
      type: str
    account:
      description:
        - The account its commands start as on its own host, before any become (empty from older executors).
        - The P(natsops.fleet.nats#connection) connection escalates from it when ansible-core skipped become because
          C(remote_user) equalled C(become_user).
      type: str
    version:
      description: natsops-executor version.
      type: str
    protocol:
      description: Wire protocol version.
      type: str
    mode:
      description: C(agent) (runs tasks on its own host; with RV(executors[].ssh) also on hosts over SSH).
      type: str
    ssh:
      description: Whether it can run tasks on hosts over SSH (zone executor).
      type: bool
    bklite:
      description: Whether it also serves the BK-Lite subjects (C(--bklite-compat)).
      type: bool
    warm:
      description: Whether it runs pipelined module runs on its own host from warm interpreters (C(--warm)); its
        RV(executors[].load) then counts C(warm_hits), C(warm_misses) and C(warm_cold_reasons).
      type: bool
    payload_cache:
      description:
        - Whether it keeps module payloads by digest (C(--payload-cache), on by default), so that callers send each
          module's zip once instead of with every task; false for older executors and C(--payload-cache 0).
        - Its RV(executors[].load) counts C(payload_hits), C(payload_misses), C(payload_bytes_saved),
          C(payload_cached_bytes), C(payload_cached_blobs), C(payload_evictions) and C(payload_capacity).
      type: bool
    subjects:
      description: The subjects it serves.
      type: list
      elements: str
    load:
      description: Running and maximum jobs, completed and failed counts, load average, SSH pool counters, payload cache
        counters.
      type: dict
      returned: when O(stats=true)
  sample:
    - id: Y1bJZqk7xXg2Jx6dCZ1AbC
      namespace: natsops
      instances: ["管理网"]
      hostname: zone-exec-1
      account: natsops
      version: 0.1.0
      protocol: "1"
      ssh: true
      load: {running: 0, max_jobs: 32, completed: 12, failed: 0}
instances:
  description:
    - For each instance id served in O(namespace), the host names of the executors serving it.
    - With O(protocol=bklite), one entry per executor that answered, named by its instance id (BK-Lite's health
      reply carries no host name).
  returned: always
  type: dict
  sample: {"default": ["exec-a", "exec-b"], "管理网": ["zone-exec-1"]}
query_result:
  description: The outcome of O(query) applied to RV(executors).
  returned: when O(query) is given
  type: raw
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.natsops.fleet.plugins.module_utils._common import TRUST_ARGUMENT_SPEC, argument_spec, compile_query, executor_client


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            **TRUST_ARGUMENT_SPEC,
            instance_id={"type": "str"},
            wait={"type": "float", "default": 0.5},
            stats={"type": "bool", "default": True},
            query={"type": "str"},
            protocol={"type": "str", "choices": ["natsops", "bklite"], "default": "natsops"},
        ),
        required_if=[("protocol", "bklite", ("instance_id",))],
        supports_check_mode=True,
    )
    params = module.params
    if params["wait"] <= 0 or params["wait"] > 60:
        module.fail_json(msg="wait must be between 0 and 60 seconds, got %s" % params["wait"])
    compiled = compile_query(module)
    client = executor_client(module, params["instance_id"])
    instances = {}
    try:
        if params["protocol"] == "bklite":
            executors = [dict(r, protocol="bklite") for r in client.bklite_health(params["wait"])]
            for record in executors:
                instances.setdefault(record.get("instance_id"), []).append(record.get("instance_id"))
        else:
            executors = client.discover(params["wait"], params["stats"])
            if params["instance_id"]:
                executors = client.serving(executors, params["instance_id"])
            for record in executors:
                if record["namespace"] == params["namespace"]:
                    for inst in record["instances"]:
                        instances.setdefault(inst, []).append(record["hostname"])
    finally:
        client.close()
    result = {"changed": False, "executors": executors, "instances": instances}
    if compiled is not None:
        result["query_result"] = compiled.search(executors)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
