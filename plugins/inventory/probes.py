# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: probes
short_description: Hosts from the natsops probe registry
description:
  - One inventory host per probe registered in the registry bucket (C(<namespace>_registry)), named by its node id,
    set up to be reached through its own probe with C(ansible_connection=natsops.fleet.nats), C(ansible_nats_executor) =
    the node id, C(ansible_nats_namespace), and C(ansible_nats_servers) when O(servers) is set here.
  - The probe's record is the host variable C(natsops_probe) (C(hostname), C(addresses), C(os), C(arch), C(zone),
    C(probe_version), C(last_seen), C(age), C(stale), ...), for O(keyed_groups), O(compose), O(groups) and O(filters).
  - Every host is in the group C(natsops_probes); with O(include_stale=true) stale hosts are also in C(natsops_probes_stale).
  - The inventory file must end with C(probes.yml) or C(probes.yaml). NATS credentials are not copied into host
    variables; give the hosts C(ansible_nats_user), C(ansible_nats_creds), ... in C(group_vars/natsops_probes).
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - constructed
  - natsops.fleet.nats
  - natsops.fleet.nats.namespace
  - natsops.fleet.nats.plugin
  - natsops.fleet.registry
options:
  plugin:
    description: The name of this plugin.
    type: str
    required: true
    choices: [natsops.fleet.probes]
  include_stale:
    description: Keep stale probes in the inventory (with C(natsops_probe.stale=true), also in group C(natsops_probes_stale)).
    type: bool
    default: false
  filters:
    description:
      - Jinja2 conditionals over the host variables (C(natsops_probe) and those of O(compose)); a host is added only
        when all are true.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
# inventory/fleet.probes.yml
plugin: natsops.fleet.probes
servers: tls://nats.example.com:4222
creds: /etc/natsops/controller.creds
stale_after: 120
filters:
  - natsops_probe.os.id == 'debian'
keyed_groups:
  - key: natsops_probe.zone
    prefix: zone
  - key: natsops_probe.arch
    prefix: arch
compose:
  ansible_host: natsops_probe.addresses[0]
"""

from typing import Any, Dict, List, Optional

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

from ansible_collections.natsops.fleet.plugins.module_utils._registry import read_registry
from ansible_collections.natsops.fleet.plugins.module_utils._resources import ResourceError, call
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import OPTION_NAMES, registry_bucket
from ansible_collections.natsops.fleet.plugins.plugin_utils._options import read_options

GROUP = "natsops_probes"
STALE_GROUP = "natsops_probes_stale"


class InventoryModule(BaseInventoryPlugin, Constructable):
    """One host per probe of the registry, reached through its own probe."""

    NAME = "natsops.fleet.probes"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(("probes.yml", "probes.yaml"))

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        options = read_options(self.get_option, OPTION_NAMES)
        namespace = self.get_option("namespace")
        bucket = self.get_option("bucket") or registry_bucket(namespace)
        try:
            records = call(options, "natsops.fleet probes inventory", self.get_option("connect_timeout"),
                           lambda nc: read_registry(nc, bucket, self.get_option("stale_after")))
        except ResourceError as exc:
            raise AnsibleParserError("natsops.fleet.probes: %s" % exc.message) from exc
        self.inventory.add_group(GROUP)
        for record in records:
            if record["stale"] and not self.get_option("include_stale"):
                continue
            self._add(record, namespace, options["servers"])

    def _add(self, record: Dict[str, Any], namespace: str, servers: Optional[List[str]]) -> None:
        strict = self.get_option("strict")
        hostvars = {"ansible_connection": "natsops.fleet.nats", "ansible_nats_executor": record["node_id"],
                    "ansible_nats_namespace": namespace, "natsops_probe": record}
        if servers:
            hostvars["ansible_nats_servers"] = servers
        composed = dict(hostvars)
        for name, expression in (self.get_option("compose") or {}).items():
            try:
                composed[name] = self._compose(expression, composed)
            except Exception:  # pylint: disable=broad-except
                if strict:
                    raise
        for condition in self.get_option("filters"):
            try:
                keep = self._compose(condition, composed)
            except Exception as exc:  # pylint: disable=broad-except
                if strict:
                    raise AnsibleParserError("natsops.fleet.probes: filter %r failed for %s: %s"
                                             % (condition, record["node_id"], exc)) from exc
                keep = False
            if not keep:
                return
        host = self.inventory.add_host(record["node_id"], group=GROUP)
        if record["stale"]:
            self.inventory.add_group(STALE_GROUP)
            self.inventory.add_child(STALE_GROUP, host)
        for name, value in hostvars.items():
            self.inventory.set_variable(host, name, value)
        self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), hostvars, host, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, host, strict=strict)
