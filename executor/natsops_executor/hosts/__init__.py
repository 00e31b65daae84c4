# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a request's work happens, chosen once per request (``Executor.host_for``).

- ``base.py``: the interface every host offers (run a process, land a file atomically, open a file to send,
  read a path's state), and the mapping of OS errors to wire error codes.
- ``local.py``: ``LocalHost``, the executor's own host (agent mode).
- ``ssh.py``: ``SSHHost``, a target host reached over a pooled SSH connection (zone executors).
"""
