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

from ansible_collections.natsops.fleet.plugins.module_utils.modules import nats_options
from ansible_collections.natsops.fleet.plugins.module_utils.wire.connect import ConnectOptionsError, connect_kwargs, describe

try:
    import nats
    import nats.errors
    import nats.js.errors
    HAS_NATS = True
except ImportError:  # pragma: no cover - reported by run()
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


def run(module, work):
    """Connect with the module's NATS options, ``await work(nc)``, close; return its result.
    Connection problems, JetStream refusals and ResourceError end the module with fail_json."""
    if not HAS_NATS:
        from ansible_collections.natsops.fleet.plugins.module_utils.client import missing_nats_message  # pylint: disable=import-outside-toplevel
        module.fail_json(msg=missing_nats_message())
    params = module.params
    try:
        kwargs = connect_kwargs(nats_options(params), "natsops.fleet %s" % module._name, params["connect_timeout"])
    except ConnectOptionsError as exc:
        module.fail_json(msg="bad NATS connection options: %s" % exc)
    kwargs.update(allow_reconnect=False, max_reconnect_attempts=0)

    async def main():
        errors = []

        async def on_error(exc):
            errors.append(exc)

        try:
            nc = await nats.connect(error_cb=on_error, **kwargs)
        except Exception as exc:  # pylint: disable=broad-except
            raise ResourceError("cannot connect to NATS (%s): %s" % (describe(nats_options(params)), exc or type(exc).__name__))
        try:
            return await work(nc)
        except nats.js.errors.APIError as exc:
            raise ResourceError("JetStream refused: %s" % (exc.description or exc), code=exc.code, err_code=exc.err_code)
        except nats.errors.NoRespondersError:
            raise ResourceError("JetStream is not enabled for this account (no responders on $JS.API); check the "
                                "server's jetstream block and the account's JetStream limits")
        except nats.errors.TimeoutError:
            raise ResourceError("NATS did not answer in %s s%s" % (params["connect_timeout"], "".join(
                "; %s" % e for e in errors if "permissions violation" in str(e).lower())))
        finally:
            await nc.close()

    try:
        return asyncio.run(main())
    except ResourceError as exc:
        module.fail_json(msg=exc.message, **exc.details)


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
