# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors of the controller-side client (standard library only, cheap to import)."""

from __future__ import annotations

from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import UNREACHABLE_CODES, WireError


class ExecutorError(WireError):
    """Base class: a wire error code, a message and details, as seen by the caller."""

    def __str__(self):
        return self.message

    @staticmethod
    def from_wire(error):
        """An executor's error reply: unreachable for connection-level codes (SSH target down, host key,
        auth), a failed task for everything else."""
        cls = ExecutorUnreachable if error.code in UNREACHABLE_CODES else ExecutorTaskError
        return cls(error.code, error.message, error.details)

    def to_dict(self):
        return {"code": self.code, "message": self.message, "unreachable": isinstance(self, ExecutorUnreachable)}

    @staticmethod
    def from_dict(data):
        cls = ExecutorUnreachable if data.get("unreachable") else ExecutorTaskError
        return cls(str(data.get("code") or "internal"), str(data.get("message") or "unknown error"))


class ExecutorUnreachable(ExecutorError):
    """The executor could not be reached or stopped answering (Ansible: unreachable)."""


class ExecutorTaskError(ExecutorError):
    """The executor was reached and reported a failure (Ansible: failed task)."""
