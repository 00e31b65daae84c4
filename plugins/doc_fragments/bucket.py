# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The settings of a JetStream bucket (key-value or object store), shared by the kv and object modules; its
    storage, replicas and max_bytes are in natsops.fleet.storage, shared with the stream module."""

    DOCUMENTATION = r"""
options:
  bucket:
    description: Bucket name (letters, digits, C(_) and C(-)).
    type: str
    required: true
  description:
    description: Free text stored with the bucket.
    type: str
  ttl:
    description: How long entries are kept, in seconds or as C(90s), C(2m30s), C(24h), C(7d) (0 keeps them forever).
    type: str
notes:
  - The bucket settings are managed only when they are set; settings not given stay as they are (on creation they take
    the defaults of the NATS client libraries). A bucket is a JetStream stream (C(KV_<bucket>) or C(OBJ_<bucket>)),
    so P(natsops.fleet.stream#module) shows and tunes what these options do not cover.
"""
