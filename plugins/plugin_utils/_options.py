# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NATS options as the controller's plugins (connection, kv lookup, probes inventory) read them from ansible-core.

Private to this collection; controller-only (plugin_utils is never shipped to targets). Standard library only: the
connection plugin imports it in every task's worker.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import OPTION_SOURCES, TRUST_SOURCES

# option name -> the environment variable it is read from (natscli's names, then natsops' own)
ENVIRONMENT = dict((name, source[1]) for name, source in OPTION_SOURCES.items())
ENVIRONMENT.update(TRUST_SOURCES)


def unset_empty_environment(options: Dict[str, Any], environ: Optional[Mapping[str, str]] = None,
                            cwd: Optional[str] = None) -> Dict[str, Any]:
    """``options`` with those whose environment variable is set but empty counted as not set (None), as natscli does.

    An AWX/AAP credential sets every environment variable of its type, empty for a field left empty
    (extensions/awx/credential_types/nats.yml: ``NATS_CREDS=`` without creds), and ansible-core makes the empty value
    of a ``type: path`` option the current directory (``type: list``: ``['']``). An option whose value came from
    elsewhere (a variable, ansible.cfg, a task keyword) keeps it. Changes ``options`` in place and returns it."""
    environ = os.environ if environ is None else environ
    here = os.path.realpath(os.getcwd() if cwd is None else cwd)
    for name, value in options.items():
        variable = ENVIRONMENT.get(name)
        if not variable or environ.get(variable) != "":
            continue
        if value in ("", [""], []) or (isinstance(value, str) and os.path.realpath(value) == here):
            options[name] = None
    return options


def read_options(get_option: Callable[[str], Any], names: Iterable[str]) -> Dict[str, Any]:
    """The NATS options ``names`` of a plugin (its ``get_option``), empty environment variables counted as unset."""
    return unset_empty_environment({name: get_option(name) for name in names})
