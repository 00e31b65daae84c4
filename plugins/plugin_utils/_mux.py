# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The worker side of the control process: one NATS connection kept across Ansible tasks (ssh's ControlPersist, for NATS).

Private to this collection; controller-only (plugin_utils is never shipped to targets).

Ansible forks a worker per task and loads the connection plugin in it; connecting to NATS
from every worker means importing nats-py and asyncio and a NATS handshake each time. Instead
the first worker starts ``_control.py`` as a small per-user process that holds the connection and
serves workers over a Unix socket in a private directory (``~/.ansible/natsops/cp``, mode 0700).
It exits after ``persist`` seconds without work. This module is imported in every task's worker,
so it stays small and uses only the standard library.

Frames on the socket: 8 bytes (JSON length, payload length, big-endian), the JSON document,
the raw payload. A worker sends one request frame and reads one reply frame.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorError, ExecutorUnreachable
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import E_CONNECT, PROTOCOL_VERSION
from ansible_collections.natsops.fleet.plugins.plugin_utils._codecache import NotPrivateError, private_dir

FRAME = struct.Struct("!II")
MAX_FRAME_JSON = 1 << 20
CONTROL_MODULE = "ansible_collections.natsops.fleet.plugins.plugin_utils._control"  # run with python -m
MUX_REVISION = "6"  # part of the socket name: a changed mux never talks to an old one (4: run_as, 5: account, 6: warm)


def control_dir() -> str:
    try:
        return private_dir("cp")
    except NotPrivateError as exc:
        raise ExecutorUnreachable(E_CONNECT, "control directory %s" % exc) from exc


def control_path(nats_options: Dict[str, Any], connect_timeout: float, persist: float) -> str:
    """One control process per set of NATS options (secrets included, hashed), timings and code revision."""
    key = json.dumps([MUX_REVISION, PROTOCOL_VERSION, sorted((k, str(v)) for k, v in nats_options.items() if v),
                      float(connect_timeout), float(persist)], sort_keys=True)
    return os.path.join(control_dir(), "%s.sock" % hashlib.sha256(key.encode("utf-8")).hexdigest()[:24])


# ---------------------------------------------------------------- frames (blocking side)

def send_frame(sock: socket.socket, doc: Dict[str, Any], payload: bytes = b"") -> None:
    data = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    sock.sendall(FRAME.pack(len(data), len(payload)) + data)
    if payload:
        sock.sendall(payload)


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    view = memoryview(bytearray(size))
    got = 0
    while got < size:
        count = sock.recv_into(view[got:], size - got)
        if not count:
            raise EOFError("control process closed the connection")
        got += count
    return view.obj


def recv_frame(sock: socket.socket) -> Tuple[Dict[str, Any], bytes]:
    json_len, payload_len = FRAME.unpack(_recv_exact(sock, FRAME.size))
    if json_len > MAX_FRAME_JSON:
        raise EOFError("oversize frame from the control process")
    doc = json.loads(bytes(_recv_exact(sock, json_len)).decode("utf-8"))
    return doc, bytes(_recv_exact(sock, payload_len)) if payload_len else b""


# ---------------------------------------------------------------- worker side

class MuxClient:
    """A worker's handle on the control process. Methods mirror ExecutorClient."""

    def __init__(self, sock: socket.socket, target: Dict[str, Any]) -> None:
        self._sock = sock
        self._target = target  # instance id and namespace, sent with every request

    @classmethod
    def connect(cls, nats_options: Dict[str, Any], connect_timeout: float, persist: float, name: str,
                target: Dict[str, Any]) -> "MuxClient":
        path = control_path(nats_options, connect_timeout, persist)
        sock = _try_connect(path)
        if sock is None:
            with open(path + ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one worker starts it; the others wait and reuse it
                sock = _try_connect(path)
                if sock is None:
                    _spawn(path, nats_options, connect_timeout, persist, name)
                    sock = _try_connect(path)
        if sock is None:
            raise ExecutorUnreachable(E_CONNECT, "the natsops control process at %s did not accept connections" % path)
        return cls(sock, target)

    def _call(self, op: str, payload: bytes = b"", **fields: Any) -> Tuple[Dict[str, Any], bytes]:
        doc = dict(self._target, op=op, **fields)
        try:
            send_frame(self._sock, doc, payload)
            reply, data = recv_frame(self._sock)
        except (OSError, EOFError, ValueError) as exc:
            raise ExecutorUnreachable(E_CONNECT, "lost the natsops control process: %s" % exc) from exc
        if "error" in reply:
            raise ExecutorError.from_dict(reply["error"])
        return reply, data

    def exec_command(self, command: Optional[str] = None, stdin: Optional[bytes] = None,
                     **kwargs: Any) -> Tuple[int, bytes, bytes]:
        reply, data = self._call("exec", stdin or b"", command=command, **kwargs)
        split = reply["stdout_len"]
        return reply["rc"], data[:split], data[split:]

    def put_file(self, local_path: str, remote_path: str, mode: Optional[int] = None) -> Dict[str, Any]:
        return self._call("put", local_path=os.path.abspath(local_path), remote_path=remote_path, mode=mode)[0]

    def fetch_file(self, remote_path: str, local_path: str) -> Dict[str, Any]:
        return self._call("fetch", remote_path=remote_path, local_path=os.path.abspath(local_path))[0]

    def discover(self, wait: float = 0.5, stats: bool = False) -> List[Dict[str, Any]]:
        return self._call("discover", wait=wait, stats=stats)[0]["executors"]

    def account(self, wait: float = 0.5) -> Optional[str]:
        return self._call("account", wait=wait)[0]["account"]

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def _try_connect(path: str) -> Optional[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        return sock
    except OSError:
        sock.close()
        return None


def _collections_root() -> str:
    """The directory holding ``ansible_collections``: one level up for each part of this module's dotted name
    (.../ansible_collections/natsops/fleet/plugins/plugin_utils/_mux.py: six)."""
    here = os.path.abspath(__file__)
    for _part in __name__.split("."):
        here = os.path.dirname(here)
    return here


def _spawn(path: str, nats_options: Dict[str, Any], connect_timeout: float, persist: float, name: str) -> None:
    """Start the control process and wait until it is connected to NATS and listening (or says why not)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_collections_root(), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-m", CONTROL_MODULE, path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/", env=env,
        start_new_session=True, close_fds=True)
    settings = {"nats_options": nats_options, "connect_timeout": connect_timeout, "persist": persist, "name": name}
    proc.stdin.write(json.dumps(settings).encode("utf-8"))  # secrets travel by pipe, never argv or environment
    proc.stdin.close()
    deadline = time.monotonic() + connect_timeout * 2 + 10
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        ready, _w, _x = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        line += chunk
    proc.stdout.close()
    try:
        status = json.loads(line.decode("utf-8")) if line else {}
    except ValueError:
        status = {}
    if status.get("ready"):
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    error = status.get("error") or {"code": E_CONNECT, "message": "the natsops control process did not start"}
    raise ExecutorError.from_dict(dict(error, unreachable=True))
