# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors of the caller side of the protocol, as the connection plugin, the control process and the executor
modules see them (private to this collection). Standard library only and cheap to import: every task's worker
imports it with the connection plugin."""

from __future__ import annotations

from typing import Any, Dict

from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import E_INTERNAL, UNREACHABLE_CODES, WireError


class ExecutorError(WireError):
    """Base class: a wire error code, a message and details, as seen by the caller."""

    def __str__(self) -> str:
        return self.message

    @staticmethod
    def from_wire(error: WireError) -> "ExecutorError":
        """An executor's error reply: unreachable for connection-level codes (SSH target down, host key,
        auth), a failed task for everything else."""
        cls = ExecutorUnreachable if error.code in UNREACHABLE_CODES else ExecutorTaskError
        return cls(error.code, error.message, error.details)

    def to_dict(self) -> Dict[str, Any]:
        """What crosses the control process's socket (see from_dict): code, message, details and whether it is
        unreachable."""
        return {"code": self.code, "message": self.message, "details": self.details,
                "unreachable": isinstance(self, ExecutorUnreachable)}

    @staticmethod
    def from_dict(data: Dict[str, Any]) -> "ExecutorError":
        cls = ExecutorUnreachable if data.get("unreachable") else ExecutorTaskError
        details = data.get("details")
        return cls(str(data.get("code") or E_INTERNAL), str(data.get("message") or "unknown error"),
                   details if isinstance(details, dict) else None)


class ExecutorUnreachable(ExecutorError):
    """The executor could not be reached or stopped answering (Ansible: unreachable)."""


class ExecutorTaskError(ExecutorError):
    """The executor was reached and reported a failure (Ansible: failed task)."""
