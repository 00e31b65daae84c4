# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Where and how much a JetStream stream keeps: the stream module, and the kv and object modules for their
    buckets (a bucket is a stream). The argument spec is STORAGE_OPTIONS of plugins/module_utils/_resources.py."""

    DOCUMENTATION = r"""
options:
  storage:
    description: V(file) or V(memory). Cannot change once the stream or bucket exists.
    type: str
    choices: [file, memory]
  replicas:
    description: Copies kept in a cluster (1 to 5; 3 survives one server down).
    type: int
  max_bytes:
    description: Most bytes kept, a number or a size such as C(512MB) or C(10G) (-1 unlimited).
    type: str
"""
