# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Where the probe registry is read and when a probe counts as stale: the probe_info module and the probes
    inventory plugin (both read it with plugins/module_utils/_registry.py)."""

    DOCUMENTATION = r"""
options:
  bucket:
    description: The registry bucket; defaults to C(<namespace>_registry) (dots of O(namespace) as C(_)).
    type: str
  stale_after:
    description: Seconds since its last heartbeat after which a probe counts as stale.
    type: float
    default: 90
"""
