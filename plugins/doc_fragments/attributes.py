# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The check mode and diff mode of the modules that share them: those that manage a JetStream resource
    (DOCUMENTATION: stream, consumer, kv, object) and those that only read (INFO_MODULE: executor_info,
    probe_info, server_info). A module states what differs in its own attributes."""

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Reports what would change and changes nothing.
  diff_mode:
    support: full
    description: Shows the managed settings before and after, by option name, durations and sizes in the units the
      options were given in (a task with C(max_age=24h) shows C(168h) before when it was a week).
"""

    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Reads only; it runs in check mode as well.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
"""
