# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Probe mode (``--register``): this host's record in the registry bucket, kept fresh by heartbeats.

The record is the value of key ``<node id>`` in the key-value bucket ``<namespace>_registry``, written with a
JetStream publish to ``$KV.<bucket>.<node id>`` (a probe needs no JetStream API rights, only that subject; see
wire/permissions.py). The bucket's TTL expires the record of a probe that went silent; a probe that stops
cleanly deletes it. Linux only (addresses from /proc), standard library otherwise.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import platform
import socket
from typing import Any, Dict, List, Optional

from natsops_executor import __version__
from natsops_executor._wire.names import REGISTRY_TIME_FORMAT, registry_bucket, registry_subject

log = logging.getLogger("natsops_executor.probe")

RECORD_SCHEMA = 1


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime(REGISTRY_TIME_FORMAT)


def _os_release(path: str = "/etc/os-release") -> Dict[str, str]:
    data = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, sep, value = line.strip().partition("=")
                if sep:
                    data[key] = value.strip().strip('"')
    except OSError:
        pass
    return {"id": data.get("ID", platform.system().lower()), "version": data.get("VERSION_ID", ""),
            "name": data.get("PRETTY_NAME", platform.system())}


def addresses() -> List[str]:
    """The host's IPv4 and global IPv6 addresses, loopback excluded (from /proc; empty elsewhere)."""
    found = []
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as handle:
            last = None
            for line in handle:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif "/32 host LOCAL" in text and last and not last.startswith("127.") and last not in found:
                    found.append(last)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 6 and fields[3] == "00" and fields[5] != "lo":  # scope global
                    raw = fields[0]
                    text = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(raw))
                    if text not in found:
                        found.append(text)
    except (OSError, ValueError):
        pass
    return found


class Heartbeat:
    """Publishes the record (``beat()`` at start, then every ``interval`` seconds); deletes it at stop."""

    def __init__(self, nc: Any, cfg: Any) -> None:
        self.nc = nc
        self.cfg = cfg
        self.node_id = cfg.instances[0]
        self.bucket = registry_bucket(cfg.namespace)
        self.subject = registry_subject(cfg.namespace, self.node_id)
        self.beats = 0
        self.task: Optional[asyncio.Future] = None
        self._warned: Any = None  # the last warning logged; False once registered
        # what does not change while the probe runs, looked up once (getfqdn may wait on DNS, in the event loop)
        self.fixed = {"schema": RECORD_SCHEMA, "node_id": self.node_id, "hostname": socket.gethostname(),
                      "fqdn": socket.getfqdn(), "os": _os_release(), "arch": platform.machine(), "kernel": platform.release(),
                      "zone": cfg.zone or "", "namespace": cfg.namespace, "probe_version": __version__, "started": _now(),
                      "interval": cfg.heartbeat_interval}

    def record(self) -> Dict[str, Any]:
        return dict(self.fixed, addresses=addresses(), last_seen=_now(), heartbeats=self.beats)

    async def beat(self) -> bool:
        """Publish the record once; True when JetStream stored it."""
        import nats.errors  # pylint: disable=import-outside-toplevel
        js = self.nc.jetstream()
        self.beats += 1
        try:
            await js.publish(self.subject, json.dumps(self.record(), sort_keys=True).encode("utf-8"), timeout=5)
        except nats.errors.NoRespondersError:
            self._warn("registry bucket %s does not exist: create it (natsops.fleet.probe role, or natsops.fleet.kv "
                       "bucket: %s ttl: 2m); retrying every %.0f s" % (self.bucket, self.bucket, self.cfg.heartbeat_interval))
            return False
        except Exception as exc:  # pylint: disable=broad-except
            self._warn("cannot write the registry record to %s: %s" % (self.subject, exc or type(exc).__name__))
            return False
        if self._warned is not False:
            log.info("registered as %s in bucket %s (heartbeat every %.0f s)", self.node_id, self.bucket, self.cfg.heartbeat_interval)
            self._warned = False
        return True

    def _warn(self, message: str) -> None:
        if self._warned != message:
            log.warning("%s", message)
            self._warned = message

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_interval)
            await self.beat()

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """Stop beating and delete the record (a delete marker), so the host leaves the registry now."""
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        try:
            await self.nc.jetstream().publish(self.subject, b"", headers={"KV-Operation": "DEL"}, timeout=5)
            log.info("unregistered %s from bucket %s", self.node_id, self.bucket)
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("could not delete the registry record %s (it expires with the bucket's TTL): %s",
                        self.subject, exc or type(exc).__name__)
