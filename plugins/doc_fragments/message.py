# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """One NATS message to send: subject, payload (text or JSON) and headers (publish, request)."""

    DOCUMENTATION = r"""
options:
  subject:
    description: The subject (dot-separated tokens, no wildcards).
    type: str
    required: true
  data:
    description: The payload as text (UTF-8). Mutually exclusive with O(json).
    type: str
  json:
    description: A value sent as its JSON text (keys sorted). Mutually exclusive with O(data).
    type: raw
  headers:
    description: NATS headers (names and string values).
    type: dict
"""
