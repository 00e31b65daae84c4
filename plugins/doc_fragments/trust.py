# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

# Who signs a caller's requests and whose replies it believes (wire/signing.py), written once; the names and
# environment variables are TRUST_SOURCES of plugins/module_utils/wire/names.py.
_TRUST_OPTIONS = r"""
  signing_key:
    description:
      - NKey seed file the requests are signed with (a seed file, an C(.nk) file, or a JWT C(.creds) file, whose user
        seed is used). Executors that trust signers run only requests signed by a key they trust.
      - Defaults to the seed of O(nkey), else of O(creds), else C(~/.config/natsops/signing.nk) when it exists (the
        P(natsops.fleet.executor#role) role creates it); without any, requests go unsigned.
    type: path
  known_executors:
    description:
      - File of the executor keys pinned per instance id, like ssh's known_hosts, one C(<instance id> <public key>)
        per line (C(*) for every instance id). When keys are pinned for the instance id addressed, a reply is
        accepted only when one of them signed it for this very request; a forged or altered reply fails the task
        with an integrity error and returns no data.
      - The P(natsops.fleet.executor#role) role pins the keys of the executors it installs.
    type: path
    default: ~/.config/natsops/known_executors
"""


class ModuleDocFragment:
    """Request signatures and pinned executor keys: the connection plugin (PLUGIN adds its sources) and the
    executor modules (MODULE; their argument spec falls back to the environment)."""

    # composed: annotated, so that ansible-test's yamllint, which expects string literals here, skips them (see nats.py)
    DOCUMENTATION: str = "options:" + _TRUST_OPTIONS

    PLUGIN = r"""
options:
  signing_key:
    vars:
      - name: ansible_nats_signing_key
    env:
      - name: NATSOPS_SIGNING_KEY
    ini:
      - section: natsops
        key: signing_key
  known_executors:
    vars:
      - name: ansible_nats_known_executors
    env:
      - name: NATSOPS_KNOWN_EXECUTORS
    ini:
      - section: natsops
        key: known_executors
"""

    MODULE: str = "options:" + _TRUST_OPTIONS + r"""
notes:
  - "O(signing_key) that is not set in the task is read from E(NATSOPS_SIGNING_KEY), O(known_executors) from
    E(NATSOPS_KNOWN_EXECUTORS), where the module runs."
"""
