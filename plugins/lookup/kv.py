# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: kv
short_description: Read keys of a JetStream key-value bucket
description:
  - Returns the current values of the given keys of a NATS JetStream key-value bucket, read from the controller.
  - The NATS connection options are those of the P(natsops.fleet.nats#connection) connection plugin, from the lookup's
    arguments, the environment (E(NATS_URL), E(NATS_CREDS), ...) or the C([natsops]) section of C(ansible.cfg).
version_added: 0.1.0
author:
  - natsops.fleet contributors (@natsops)
extends_documentation_fragment:
  - natsops.fleet.nats
  - natsops.fleet.nats.plugin
options:
  _terms:
    description: The keys to read.
    type: list
    elements: str
    required: true
  bucket:
    description: The key-value bucket.
    type: str
    required: true
  json:
    description: Decode each value as JSON.
    type: bool
    default: false
  details:
    description: Return for each key a dictionary with C(bucket), C(key), C(value) and C(revision) instead of the value alone.
    type: bool
    default: false
  default:
    description:
      - The result for a key that does not exist or is deleted, or that is in a bucket that does not exist (for example
        in check mode, when an earlier task of the play would create the bucket). Without it such a key is an error.
    type: raw
seealso:
  - module: natsops.fleet.kv
"""

EXAMPLES = r"""
- name: One value
  ansible.builtin.debug:
    msg: "{{ lookup('natsops.fleet.kv', 'rollout.batch_size', bucket='config') }}"

- name: A JSON value, with a default when the key is not set
  ansible.builtin.set_fact:
    maintenance: "{{ lookup('natsops.fleet.kv', 'maintenance', bucket='config', json=true, default={'enabled': false}) }}"

- name: Compare-and-set, from the revision that was read (revision 0 creates the key when it is not there yet)
  vars:
    current: "{{ lookup('natsops.fleet.kv', 'counter', bucket='config', details=true, default={'value': '0', 'revision': 0}) }}"
  natsops.fleet.kv:
    bucket: config
    name: counter
    value: "{{ current.value | int + 1 }}"
    revision: "{{ current.revision }}"

- name: Several keys from a secured cluster
  ansible.builtin.debug:
    msg: "{{ query('natsops.fleet.kv', 'a', 'b', bucket='config', servers='tls://nats.example.com:4222', creds='/etc/natsops/ops.creds') }}"
"""

RETURN = r"""
_raw:
  description: The values of the keys, in the order given (dictionaries with O(details)).
  type: list
  elements: raw
"""

import json
from typing import Any, Dict, List, Optional

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.natsops.fleet.plugins.module_utils._resources import HAS_NATS, ResourceError, call
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import OPTION_NAMES
from ansible_collections.natsops.fleet.plugins.plugin_utils._options import read_options

if HAS_NATS:
    import nats.js.errors


class LookupModule(LookupBase):
    """Key-value entries, read from the controller through one NATS connection per lookup."""

    def run(self, terms: List[Any], variables: Optional[Dict[str, Any]] = None, **kwargs: Any) -> List[Any]:
        self.set_options(var_options=variables, direct=kwargs)
        options = read_options(self.get_option, OPTION_NAMES)
        keys = [str(t) for t in terms]
        try:
            return call(options, "natsops.fleet kv lookup", self.get_option("connect_timeout"), lambda nc: self._read(nc, keys))
        except ResourceError as exc:
            raise AnsibleLookupError("natsops.fleet.kv: %s" % exc.message) from exc

    async def _read(self, nc: Any, keys: List[str]) -> List[Any]:
        bucket = self.get_option("bucket")
        try:
            kv = await nc.jetstream().key_value(bucket)
        except nats.js.errors.BucketNotFoundError as exc:
            if self.get_option("default") is None:
                raise AnsibleLookupError("natsops.fleet.kv: key-value bucket %s does not exist (give default= to accept "
                                         "that)" % bucket) from exc
            return [self.get_option("default") for key in keys]  # no bucket (yet, in check mode): no key either
        return [await self._value(kv, bucket, key) for key in keys]

    async def _value(self, kv: Any, bucket: str, key: str) -> Any:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            if self.get_option("default") is None:
                raise AnsibleLookupError("natsops.fleet.kv: key %s of bucket %s does not exist (give default= to accept that)"
                                         % (key, bucket)) from exc
            return self.get_option("default")
        except nats.js.errors.InvalidKeyError as exc:
            raise AnsibleLookupError("natsops.fleet.kv: key %r is invalid: letters, digits and -/_=. only" % key) from exc
        value = (entry.value or b"").decode("utf-8", "replace")
        if self.get_option("json"):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise AnsibleLookupError("natsops.fleet.kv: key %s of bucket %s is not JSON (%s)" % (key, bucket, exc)) from exc
        if self.get_option("details"):
            return {"bucket": bucket, "key": key, "value": value, "revision": entry.revision}
        return value
