# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the NATS resource modules (stream, ...) share: one NATS connection per module run, JetStream errors
as clear failures, sizes and durations as users write them, and before/after comparison."""

from __future__ import annotations

import asyncio
import json
import re

from ansible.module_utils.common.text.formatters import human_to_bytes

from ansible_collections.natsops.fleet.plugins.module_utils._common import nats_options
from ansible_collections.natsops.fleet.plugins.module_utils.wire import connect as wire_connect
from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import bucket_problems

try:
    import nats
    import nats.errors
    import nats.js.errors
    HAS_NATS = True
except ImportError:  # pragma: no cover - reported by call()
    HAS_NATS = False

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNITS = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9, "d": 86400e9}


class ResourceError(Exception):
    """A failure to report with fail_json (message and details)."""

    def __init__(self, message, **details):
        super(ResourceError, self).__init__(message)
        self.message = message
        self.details = details


def duration_ns(value, option):
    """Seconds (a number) or a Go-style duration ('90s', '2m30s', '24h', '7d') as nanoseconds; 0 is unlimited."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return int(round(float(text) * 1e9))
    except ValueError:
        pass
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ResourceError("option %s: %r is not a duration; use seconds or units such as 90s, 2m30s, 24h, 7d" % (option, value))
    return int(round(sum(float(n) * _UNITS[u] for n, u in parts)))


def size_bytes(value, option):
    """A byte count, or a size such as '512MB', '1G'; -1 is unlimited."""
    if value is None:
        return None
    text = str(value).strip()
    if re.match(r"^-?\d+$", text):
        return int(text)
    try:
        return int(human_to_bytes(text.replace(" ", "")))
    except ValueError as exc:
        raise ResourceError("option %s: %r is not a size (%s)" % (option, value, exc))


def call(options, name, timeout, work):
    """Connect with the connection options (the user-facing names), ``await work(nc)``, close; from synchronous
    code: a module run, the kv lookup, the probes inventory. Every failure is a ResourceError, secrets never in
    it: nats-py missing, bad options, NATS unreachable, JetStream refusals, timeouts (naming the permission
    violations the server reported)."""
    if not HAS_NATS:
        from ansible_collections.natsops.fleet.plugins.module_utils._client import missing_nats_message  # pylint: disable=import-outside-toplevel
        raise ResourceError(missing_nats_message())

    async def main():
        errors = []

        async def on_error(exc):
            errors.append(exc)

        try:
            nc = await wire_connect.connect(options, name, timeout, wire_connect.ONE_SHOT, error_cb=on_error)
        except wire_connect.ConnectOptionsError as exc:
            raise ResourceError("bad NATS connection options: %s" % exc) from None
        except wire_connect.NatsConnectError as exc:
            raise ResourceError(str(exc)) from None
        try:
            return await work(nc)
        except nats.js.errors.APIError as exc:
            raise ResourceError("JetStream refused: %s" % (exc.description or exc), code=exc.code, err_code=exc.err_code) from None
        except nats.errors.NoRespondersError:
            raise ResourceError("JetStream is not enabled for this account (no responders on $JS.API); check the "
                                "server's jetstream block and the account's JetStream limits") from None
        except nats.errors.TimeoutError:
            raise ResourceError("NATS did not answer in %s s%s" % (timeout, "".join(
                "; %s" % e for e in errors if "permissions violation" in str(e).lower()))) from None
        finally:
            await nc.close()

    return asyncio.run(main())


def run(module, work):
    """Connect with the module's NATS options, ``await work(nc)``, close; return its result.
    Every failure (see call) ends the module with fail_json."""
    params = module.params
    try:
        return call(nats_options(params), "natsops.fleet %s" % module._name, params["connect_timeout"], work)
    except ResourceError as exc:
        module.fail_json(msg=exc.message, **exc.details)


def ensure_resource(module, ensure):
    """Run ``ensure(nc)`` (returning changed, result, diff) on one connection and exit the module with its result,
    the diff in --diff mode."""
    changed, result, diff = run(module, ensure)
    if module._diff:
        result["diff"] = diff
    module.exit_json(changed=changed, **result)


def message_options():
    """The options of a module that sends one message (publish, request)."""
    return {"subject": {"type": "str", "required": True}, "data": {"type": "str"}, "json": {"type": "raw"},
            "headers": {"type": "dict"}}


def payload_of(module):
    """(subject, payload bytes, headers) from the module's message options, or fail_json."""
    params = module.params
    subject = params["subject"]
    if not subject or any(c.isspace() for c in subject) or any(t in ("*", ">") or not t for t in subject.split(".")):
        module.fail_json(msg="subject %r is invalid: dot-separated tokens without whitespace or wildcards" % subject)
    if params["json"] is not None:
        payload = json.dumps(params["json"], ensure_ascii=False, sort_keys=True).encode("utf-8")
    else:
        payload = (params["data"] or "").encode("utf-8")
    headers = dict((str(k), str(v)) for k, v in (params["headers"] or {}).items())
    return subject, payload, headers


def changes(before, wanted):
    """The keys of ``wanted`` whose values differ from ``before`` (None in wanted: not managed)."""
    return sorted(k for k, v in wanted.items() if v is not None and before.get(k) != v)


# Key-value and object store buckets are streams (KV_<bucket>, OBJ_<bucket>); their settings, by option name,
# as fields of the stream's configuration.
BUCKET_FIELDS = {"description": "description", "ttl": "max_age", "max_bytes": "max_bytes", "storage": "storage",
                 "replicas": "num_replicas"}


def bucket_options(**extra):
    """The argument spec of a bucket's settings (see doc fragment natsops.fleet.bucket) plus ``extra``."""
    spec = {"bucket": {"type": "str", "required": True}, "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "description": {"type": "str"}, "ttl": {"type": "str"}, "max_bytes": {"type": "str"},
            "storage": {"type": "str", "choices": ["file", "memory"]}, "replicas": {"type": "int"}}
    spec.update(extra)
    return spec


def bucket_settings(params, fields=None):
    """The managed bucket settings as stream fields (None: not managed); raises ResourceError on bad values."""
    for problem in bucket_problems(params["bucket"]):
        raise ResourceError(problem)
    fields = fields or BUCKET_FIELDS
    wanted = dict((api, params.get(option)) for option, api in fields.items())
    wanted["max_age"] = duration_ns(params.get("ttl"), "ttl")
    wanted["max_bytes"] = size_bytes(params.get("max_bytes"), "max_bytes")
    if wanted["num_replicas"] is not None and not 1 <= wanted["num_replicas"] <= 5:
        raise ResourceError("option replicas: %d is not between 1 and 5" % wanted["num_replicas"])
    return wanted


async def stream_config(js, stream):
    """The configuration of a stream as a dict, or None when it does not exist."""
    from nats.js import errors  # pylint: disable=import-outside-toplevel
    try:
        return (await js.stream_info(stream)).config.as_dict()
    except errors.NotFoundError:
        return None


def check_bucket_task(module, fields, item_options, item):
    """A kv or object task manages the bucket (without ``name``) or one ``item`` of it (with ``name``): fail on
    options of the other kind and on bad bucket settings, before anything connects."""
    params = module.params
    try:
        bucket_settings(params, fields)
    except ResourceError as exc:
        module.fail_json(msg=exc.message)
    if params["name"] is None:
        given = [o for o in item_options if params[o] is not None and params[o] is not False]
        if given:
            module.fail_json(msg="%s need a name (the %s); without name the task manages the bucket" % (", ".join(given), item))
    else:
        settings = [o for o in fields if params[o] is not None]
        if settings:
            module.fail_json(msg="%s are bucket settings; give them in a task without name" % ", ".join(settings))


async def ensure_bucket(js, stream, bucket, wanted, check_mode, create, delete, absent):
    """Make the bucket stored in ``stream`` exist with ``wanted`` settings, or not exist (``absent``).

    ``create(settings)`` and ``delete()`` make and remove the bucket with the client's own bucket API (so the stream
    gets every setting a bucket needs); ``settings`` are the common ones as that API takes them (description,
    replicas, max_bytes, ttl in seconds, storage). Later changes update the stream.
    Returns (changed, {"bucket": stream config after, "changed_settings": [...]}, diff)."""
    from nats.js.api import StorageType, StreamConfig  # pylint: disable=import-outside-toplevel
    before = await stream_config(js, stream)
    if absent:
        if before is None:
            return False, {"bucket": {}, "changed_settings": []}, {"before": {}, "after": {}}
        if not check_mode:
            await delete()
        return True, {"bucket": {}, "changed_settings": ["state"]}, {"before": {"bucket": bucket}, "after": {}}
    managed = dict((k, v) for k, v in wanted.items() if v is not None)
    if before is None:
        after = {}
        if not check_mode:
            await create({"description": wanted["description"], "replicas": wanted["num_replicas"] or 1,
                          "max_bytes": wanted["max_bytes"], "ttl": wanted["max_age"] / 1e9 if wanted["max_age"] else None,
                          "storage": StorageType(wanted["storage"]) if wanted["storage"] else None})
            after = await stream_config(js, stream)
        return True, {"bucket": after, "changed_settings": sorted(managed) or ["state"]}, {
            "before": {}, "after": dict(managed, bucket=bucket)}
    if wanted.get("storage") is not None and before.get("storage") != wanted["storage"]:
        raise ResourceError("the storage of bucket %s cannot change (%s -> %s); make a new bucket, or delete this one "
                            "(state: absent) first" % (bucket, before.get("storage"), wanted["storage"]))
    changed = changes(before, wanted)
    after = before
    if changed:
        after = {}
        if not check_mode:
            update = dict(before)
            update.update((k, wanted[k]) for k in changed)
            if update.get("max_age") and (update.get("duplicate_window") or 0) > update["max_age"]:
                update["duplicate_window"] = update["max_age"]  # NATS requires the dedupe window within the TTL
            after = (await js.update_stream(StreamConfig.from_response(update))).config.as_dict()
    return bool(changed), {"bucket": after, "changed_settings": changed}, {
        "before": dict((k, before.get(k)) for k in managed), "after": managed}
