# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control process itself (``python -m ansible_collections.natsops.fleet.plugins.plugin_utils._control``).

Private to this collection and controller-only, like everything in plugin_utils (never shipped to targets).
Started by a worker through ``_mux.MuxClient.connect``; holds one NATS connection and serves the workers'
frames (defined in ``_mux``) over the Unix socket until it has been idle for ``persist`` seconds or NATS is lost.
Workers never import this module: it pulls in asyncio and nats-py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.natsops.fleet.plugins.module_utils._errors import ExecutorError
from ansible_collections.natsops.fleet.plugins.plugin_utils._mux import FRAME, MAX_FRAME_JSON
from ansible_collections.natsops.fleet.plugins.module_utils.wire.contract import E_INTERNAL, WireError
from ansible_collections.natsops.fleet.plugins.module_utils.wire.messages import DEFAULT_KEEPALIVE


def serve(path: str, settings: Dict[str, Any]) -> int:
    """Run the control process (blocking). Imports nats-py only here."""
    from ansible_collections.natsops.fleet.plugins.module_utils import _client as client  # pylint: disable=import-outside-toplevel

    nats_options = settings["nats_options"]
    connect_timeout = float(settings["connect_timeout"])
    persist = float(settings["persist"])

    async def main() -> int:
        try:
            trust = client.CallerTrust.from_options(nats_options)  # the signing key is read once, here
            nc = await client.open_nats(nats_options, settings.get("name") or "natsops.fleet control", connect_timeout)
        except ExecutorError as exc:
            _announce({"error": exc.to_dict()})
            return 1
        servers = ",".join(client.wire_connect.server_list(nats_options.get("servers")))
        payloads = client.PayloadMemory()  # the module payloads sent to each instance id's executors, for every task
        state = {"active": 0, "last": time.monotonic()}

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            state["active"] += 1
            try:
                while True:
                    try:
                        header = await reader.readexactly(FRAME.size)
                    except asyncio.IncompleteReadError:
                        return
                    json_len, payload_len = FRAME.unpack(header)
                    if json_len > MAX_FRAME_JSON:
                        return
                    doc = json.loads((await reader.readexactly(json_len)).decode("utf-8"))
                    payload = await reader.readexactly(payload_len) if payload_len else b""
                    reply, data = await _dispatch(client, nc, servers, connect_timeout, trust, payloads, doc, payload)
                    encoded = json.dumps(reply, ensure_ascii=False).encode("utf-8")
                    writer.write(FRAME.pack(len(encoded), len(data)) + encoded)
                    if data:
                        writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                return
            finally:
                state["active"] -= 1
                state["last"] = time.monotonic()
                writer.close()

        temp = "%s.%d.tmp" % (path, os.getpid())
        server = await asyncio.start_unix_server(handle, path=temp)
        os.chmod(temp, 0o600)
        os.rename(temp, path)
        identity = os.stat(path).st_ino
        _announce({"ready": True, "pid": os.getpid()})
        try:
            while not nc.is_closed:
                await asyncio.sleep(0.5)
                if state["active"] == 0 and time.monotonic() - state["last"] > persist:
                    break
        finally:
            server.close()
            try:
                if os.stat(path).st_ino == identity:  # never remove a newer process's socket
                    os.unlink(path)
            except OSError:
                pass
            if not nc.is_closed:
                await nc.close()
        return 0

    return asyncio.run(main())


def _announce(status: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(status) + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


_ACCOUNTS: Dict[Tuple[str, Optional[str]], str] = {}  # (namespace, instance id) -> the account its executor reported
_DISCOVERY: Dict[str, Any] = {"at": float("-inf"), "executors": [], "lock": asyncio.Lock()}  # a Lock binds no loop
DISCOVERY_REUSE = 5.0  # seconds one discovery answers the account questions of every host


async def _account(core: Any, wait: float) -> Optional[str]:
    """The account of the executor serving the request's instance id, asked by every task's worker: kept while this
    process lives. One discovery (a fan-out every executor answers) serves every host of a play at once, and runs
    again only for an instance id it did not answer for, at most every DISCOVERY_REUSE seconds."""
    key = (core.namespace, core.instance_id)
    if key in _ACCOUNTS:
        return _ACCOUNTS[key]
    async with _DISCOVERY["lock"]:  # workers asking at once share one discovery
        found = core.account_in(_DISCOVERY["executors"])
        if found is None and time.monotonic() - _DISCOVERY["at"] > DISCOVERY_REUSE:
            _DISCOVERY["executors"] = await core.discover(wait)
            _DISCOVERY["at"] = time.monotonic()
            found = core.account_in(_DISCOVERY["executors"])
    if found is not None:  # not kept when unknown: the executor may be on its way
        _ACCOUNTS[key] = found
    return found


async def _dispatch(client: ModuleType, nc: Any, servers: str, connect_timeout: float, trust: Any, payloads: Any,
                    doc: Dict[str, Any], payload: bytes) -> Tuple[Dict[str, Any], bytes]:
    """Run one worker request with a per-request AsyncExecutorClient on the shared connection."""
    try:
        core = client.AsyncExecutorClient(nc, doc.get("instance_id"), doc.get("namespace", "natsops"),
                                          connect_timeout, doc.get("keepalive", DEFAULT_KEEPALIVE), servers,
                                          doc.get("target"), trust, doc.get("executor_wait", client.DEFAULT_EXECUTOR_WAIT),
                                          payloads)
        op = doc.get("op")
        if op == "exec":
            rc, out, err = await core.exec_command(command=doc.get("command"), stdin=payload or None,
                                                   shell=doc.get("shell", "/bin/sh"), become=doc.get("become"),
                                                   pty=doc.get("pty", False), timeout=doc.get("timeout", 0),
                                                   env=doc.get("env"), cwd=doc.get("cwd"), no_log=bool(doc.get("no_log")),
                                                   run_as=doc.get("run_as"), warm=doc.get("warm", True) is not False)
            return {"rc": rc, "stdout_len": len(out)}, out + err
        if op == "put":
            return {"result": await core.put_file(doc["local_path"], doc["remote_path"], doc.get("mode"))}, b""
        if op == "fetch":
            return {"result": await core.fetch_file(doc["remote_path"], doc["local_path"])}, b""
        if op == "account":
            return {"account": await _account(core, doc.get("wait", 0.5))}, b""
        if op == "discover":
            return {"executors": await core.discover(doc.get("wait", 0.5), doc.get("stats", False))}, b""
        return {"error": {"code": E_INTERNAL, "message": "unknown control operation %r" % op}}, b""
    except ExecutorError as exc:
        return {"error": exc.to_dict()}, b""
    except WireError as exc:  # a request the client refused before sending (bad instance id, namespace)
        return {"error": {"code": exc.code, "message": exc.message, "unreachable": False}}, b""
    except Exception as exc:  # pylint: disable=broad-except
        return {"error": {"code": E_INTERNAL, "message": "control process error: %r" % exc, "unreachable": False}}, b""


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m ...plugin_utils._control SOCKET_PATH < settings.json\n")
        return 2
    settings = json.loads(sys.stdin.read())
    return serve(argv[1], settings)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
