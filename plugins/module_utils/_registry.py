# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The probe registry as data, for the probe_info module and the probes inventory plugin (private to this
collection; the options that choose what is read are doc fragment natsops.fleet.registry).

Probes (``natsops-executor --register``, executor/natsops_executor/probe.py) keep one key each in the key-value
bucket ``<namespace>_registry``: their node id, holding a JSON record (node id, host name, addresses, OS, arch,
zone, probe version, last seen). A record older than ``stale_after`` seconds is stale: its probe missed heartbeats.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Dict, List, Optional

from ansible_collections.natsops.fleet.plugins.module_utils._resources import ResourceError
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import REGISTRY_TIME_FORMAT

STALE_AFTER = 90.0  # seconds without a heartbeat after which a probe counts as stale, unless told otherwise


def _age(last_seen: Any, now: datetime.datetime) -> Optional[float]:
    try:
        seen = datetime.datetime.strptime(last_seen, REGISTRY_TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        return None
    return round((now - seen).total_seconds(), 3)


async def read_registry(nc: Any, bucket: str, stale_after: float) -> List[Dict[str, Any]]:
    """Every record of the bucket, sorted by node id, each with ``age`` (seconds since last seen), ``stale`` and
    ``revision``. Raises ResourceError when the bucket does not exist."""
    import nats.js.errors  # pylint: disable=import-outside-toplevel
    js = nc.jetstream()
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError as exc:
        raise ResourceError("probe registry bucket %s does not exist: no probe was installed in this namespace yet "
                            "(the natsops.fleet.probe role creates it)" % bucket) from exc
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    now = datetime.datetime.now(datetime.timezone.utc)
    records = []
    for key in sorted(keys):
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue  # deleted between listing and reading
        try:
            record = json.loads((entry.value or b"").decode("utf-8"))
        except ValueError:
            record = None
        if not isinstance(record, dict):
            record = {"node_id": key, "invalid": True}
        record["node_id"] = key  # the key is authoritative: a probe can write only its own key
        record["revision"] = entry.revision
        record["age"] = _age(record.get("last_seen"), now)
        record["stale"] = record["age"] is None or record["age"] > stale_after
        records.append(record)
    return records
