# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the NATS resource modules (stream, consumer, kv, object, publish, request, server_info, probe_info) share,
and the kv lookup and probes inventory with them (private to this collection): one NATS connection per run
(``call``, ``run``), JetStream refusals as clear failures, sizes and durations as users write them, the rules for
stream and consumer names and for replicas, bucket settings, and the present and absent paths of a stream,
consumer or bucket (check mode, result, diff of the managed settings), and how those settings read in diffs and
``changed_settings``: by the module's option names, in the units the user wrote (SettingsView)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.formatters import human_to_bytes

from ansible_collections.natsops.fleet.plugins.module_utils._common import client_name, nats_options
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
# the units of a duration written in several parts ('1d12h', '2m30s'), largest first
_PARTS = (("d", 86400 * 10**9), ("h", 3600 * 10**9), ("m", 60 * 10**9), ("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1))
_NUMBER_RE = re.compile(r"^-?\d+(?:\.\d+)?$")
_SIZE_RE = re.compile(r"^\d+(?:\.\d+)?\s*([A-Za-z]+)$")
# A stream or consumer name is a subject token and a file name on the server.
_NAME_RE = re.compile(r"^[^\s.*>/\\]+$")
MAX_REPLICAS = 5  # JetStream keeps at most five copies of a stream

# Result of an ensure coroutine: (changed, result for exit_json, diff)
Outcome = Tuple[bool, Dict[str, Any], Dict[str, Any]]


class ResourceError(Exception):
    """A failure to report with fail_json (message and details)."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def check_name(value: str, what: str) -> str:
    """A stream or consumer name, or ResourceError naming ``what`` (the option or field)."""
    if not _NAME_RE.match(value):
        raise ResourceError("%s %r is invalid: no whitespace, '.', '*', '>', '/' or '\\'" % (what, value))
    return value


def replicas(value: Optional[int], option: str = "replicas") -> Optional[int]:
    """A stream's (or bucket's) number of replicas, 1 to 5 (None: not managed); ResourceError otherwise."""
    if value is not None and not 1 <= value <= MAX_REPLICAS:
        raise ResourceError("option %s: %d is not between 1 and %d" % (option, value, MAX_REPLICAS))
    return value


def duration_ns(value: Any, option: str) -> Optional[int]:
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


def size_bytes(value: Any, option: str) -> Optional[int]:
    """A byte count, or a size such as '512MB', '1G'; -1 is unlimited."""
    if value is None:
        return None
    text = str(value).strip()
    if re.match(r"^-?\d+$", text):
        return int(text)
    try:
        return int(human_to_bytes(text.replace(" ", "")))
    except ValueError as exc:
        raise ResourceError("option %s: %r is not a size (%s)" % (option, value, exc)) from exc


def _number_text(value: float) -> str:
    """A number without exponent or trailing zeros: 1.5, 604800."""
    return ("%.3f" % value).rstrip("0").rstrip(".")


def _exact(value: float) -> bool:
    """True when ``value`` is written exactly with three decimals at most."""
    return abs(value * 1000 - round(value * 1000)) < 1e-6


def duration_text(ns: Optional[int], like: Any = None) -> Any:
    """A duration in nanoseconds as the user wrote ``like`` (their option value): seconds (a number) when they gave a
    number, their unit when they gave one ('7d', '168h'), else in parts ('1d12h', '2m30s'); 0 (unlimited) is 0."""
    if ns is None:
        return None
    ns = int(ns)
    if ns == 0:
        return 0
    text = str(like).strip() if like is not None else ""
    if _NUMBER_RE.match(text):
        seconds = ns / 1e9
        return int(seconds) if seconds == int(seconds) else seconds
    parts = _DURATION_RE.findall(text)
    if len(parts) == 1 and _exact(ns / _UNITS[parts[0][1]]):
        return _number_text(ns / _UNITS[parts[0][1]]) + parts[0][1]
    shown, rest = [], ns
    for unit, size in _PARTS:
        count, rest = divmod(rest, size)
        if count:
            shown.append("%d%s" % (count, unit))
    return "".join(shown)


def size_text(count: Optional[int], like: Any = None) -> Any:
    """A byte count as the user wrote ``like``: in their unit when they gave one ('64MB') and it is exact, else the
    number of bytes; -1 (unlimited) is -1."""
    if count is None:
        return None
    match = _SIZE_RE.match(str(like).strip()) if like is not None else None
    if match is None or count < 0:
        return count
    try:
        per = human_to_bytes("1" + match.group(1))
    except ValueError:
        return count
    if not _exact(count / per):
        return count
    return _number_text(count / per) + match.group(1)


# a setting's field (or fields) in the API's configuration
Field = Union[str, Tuple[str, ...]]


class SettingsView:
    """How the settings of a stream, consumer or bucket read to the user, in diffs and ``changed_settings``: by the
    module's option names (``fields``: option -> API field or fields) and in the units the user wrote in ``params``
    (``durations``, ``sizes`` and lists of durations ``duration_lists``; the rest as the API has them, enums as
    their value). ``read`` gives the value of an option made of several API fields."""

    def __init__(self, fields: Dict[str, Field], params: Dict[str, Any], durations: Sequence[str] = (), sizes: Sequence[str] = (),
                 duration_lists: Sequence[str] = (), read: Optional[Dict[str, Callable[[Dict[str, Any]], Any]]] = None) -> None:
        self._fields = fields
        self._params = params
        self._durations = set(durations)
        self._sizes = set(sizes)
        self._duration_lists = set(duration_lists)
        self._read = read or {}

    def options(self, api_fields: Iterable[str]) -> List[str]:
        """The option names of these API fields (those of no option left out), sorted."""
        given = set(api_fields)
        return sorted(o for o, api in self._fields.items() if given.intersection((api,) if isinstance(api, str) else api))

    def show(self, config: Dict[str, Any], managed_only: bool = True) -> Dict[str, Any]:
        """``config`` (API fields and units) by option name: the options the user set, or (``managed_only`` False)
        every option the configuration has."""
        shown = {}
        for option, api in self._fields.items():
            like = self._params.get(option)
            if managed_only and like is None:
                continue
            if option in self._read:
                value = self._read[option](config)
            else:
                value = config.get(api) if isinstance(api, str) else next((config[f] for f in api if config.get(f) is not None), None)
            if value is None and not managed_only:
                continue
            shown[option] = self._text(option, value, like)
        return shown

    def _text(self, option: str, value: Any, like: Any) -> Any:
        if option in self._durations:
            return duration_text(value, like)
        if option in self._sizes:
            return size_text(value, like)
        if option in self._duration_lists and value is None and like is not None:
            return []
        if option in self._duration_lists and value is not None:
            likes = list(like or [None])
            return [duration_text(v, likes[min(i, len(likes) - 1)]) for i, v in enumerate(value)]
        return getattr(value, "value", value)


def call(options: Dict[str, Any], name: str, timeout: float, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Connect with the connection options (the user-facing names), ``await work(nc)``, close; from synchronous
    code: a module run, the kv lookup, the probes inventory. Every failure is a ResourceError, secrets never in
    it: nats-py missing, bad options, NATS unreachable, JetStream refusals, timeouts (naming the permission
    violations the server reported)."""
    if not HAS_NATS:
        from ansible_collections.natsops.fleet.plugins.module_utils._client import missing_nats_message  # pylint: disable=import-outside-toplevel
        raise ResourceError(missing_nats_message())

    async def main() -> Any:
        errors: List[Exception] = []

        async def on_error(exc: Exception) -> None:
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


def run(module: AnsibleModule, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Connect with the module's NATS options, ``await work(nc)``, close; return its result.
    Every failure (see call) ends the module with fail_json."""
    params = module.params
    try:
        return call(nats_options(params), client_name(module), params["connect_timeout"], work)
    except ResourceError as exc:
        module.fail_json(msg=exc.message, **exc.details)


def ensure_resource(module: AnsibleModule, ensure: Callable[[Any], Awaitable[Outcome]]) -> None:
    """Run ``ensure(nc)`` (returning changed, result, diff) on one connection and exit the module with its result,
    the diff in --diff mode; the result's ``warnings`` (a list) become the module's warnings."""
    changed, result, diff = run(module, ensure)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    if module._diff:
        result["diff"] = diff
    module.exit_json(changed=changed, **result)


def message_options() -> Dict[str, Dict[str, Any]]:
    """The options of a module that sends one message (publish, request)."""
    return {"subject": {"type": "str", "required": True}, "data": {"type": "str"}, "json": {"type": "raw"},
            "headers": {"type": "dict"}}


def payload_of(module: AnsibleModule) -> Tuple[str, bytes, Dict[str, str]]:
    """(subject, payload bytes, headers) from the module's message options, or fail_json."""
    params = module.params
    subject = params["subject"]
    if not subject or any(c.isspace() for c in subject) or any(t in ("*", ">") or not t for t in subject.split(".")):
        module.fail_json(msg="subject %r is invalid: dot-separated tokens without whitespace or wildcards" % subject)
    if params["json"] is not None:
        payload = json.dumps(params["json"], ensure_ascii=False, sort_keys=True).encode("utf-8")
    else:
        payload = (params["data"] or "").encode("utf-8")
    headers = {str(k): str(v) for k, v in (params["headers"] or {}).items()}
    return subject, payload, headers


def changes(before: Dict[str, Any], wanted: Dict[str, Any]) -> List[str]:
    """The keys of ``wanted`` whose values differ from ``before`` (None in wanted: not managed)."""
    return sorted(k for k, v in wanted.items() if v is not None and before.get(k) != v)


# Key-value and object store buckets are streams (KV_<bucket>, OBJ_<bucket>); their settings, by option name,
# as fields of the stream's configuration.
BUCKET_FIELDS = {"description": "description", "ttl": "max_age", "max_bytes": "max_bytes", "storage": "storage",
                 "replicas": "num_replicas"}


# Where and how much a stream (or a bucket, which is a stream) keeps: doc fragment natsops.fleet.storage.
STORAGE_OPTIONS = {"storage": {"type": "str", "choices": ["file", "memory"]}, "replicas": {"type": "int"},
                   "max_bytes": {"type": "str"}}


def bucket_options(**extra: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The argument spec of a bucket's settings (doc fragments natsops.fleet.bucket and natsops.fleet.storage)
    plus ``extra``."""
    spec = {"bucket": {"type": "str", "required": True}, "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "description": {"type": "str"}, "ttl": {"type": "str"}}
    spec.update(STORAGE_OPTIONS)
    spec.update(extra)
    return spec


def bucket_settings(params: Dict[str, Any], fields: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The managed bucket settings as stream fields (None: not managed); raises ResourceError on bad values."""
    for problem in bucket_problems(params["bucket"]):
        raise ResourceError(problem)
    fields = fields or BUCKET_FIELDS
    wanted = {api: params.get(option) for option, api in fields.items()}
    wanted["max_age"] = duration_ns(params.get("ttl"), "ttl")
    wanted["max_bytes"] = size_bytes(params.get("max_bytes"), "max_bytes")
    replicas(wanted["num_replicas"])
    return wanted


def bucket_view(params: Dict[str, Any], fields: Optional[Dict[str, str]] = None) -> SettingsView:
    """How a bucket's settings (``fields``: option -> stream field) read in diffs: ttl as a duration, max_bytes as
    a size, in the units of ``params``."""
    return SettingsView(dict(fields or BUCKET_FIELDS), params, durations=("ttl",), sizes=("max_bytes",))


async def ensure_absent(kind: str, before: Optional[Dict[str, Any]], check_mode: bool,
                        delete: Callable[[], Awaitable[Any]], shown: Optional[Dict[str, Any]] = None) -> Outcome:
    """State absent of a stream, consumer or bucket: ``delete()`` it when it exists (``before``, its configuration;
    None when it does not), not in check mode. The result names it ``kind``; the diff shows ``shown`` (default:
    ``before``) going away."""
    if before is None:
        return False, {kind: {}, "changed_settings": []}, {"before": {}, "after": {}}
    if not check_mode:
        await delete()
    return True, {kind: {}, "changed_settings": ["state"]}, {"before": before if shown is None else shown, "after": {}}


async def ensure_created(kind: str, config: Dict[str, Any], check_mode: bool,
                         create: Callable[[Dict[str, Any]], Awaitable[Any]], view: SettingsView,
                         state: Callable[[Any], Dict[str, Any]]) -> Outcome:
    """State present of a stream or consumer that does not exist: ``create(config)`` (returning its info), not in
    check mode. The result names it ``kind``, with ``state(info)``; the diff shows the settings the user set as
    ``view`` reads them."""
    settings = view.options(config)
    if check_mode:
        return True, {kind: config, "changed_settings": settings}, {"before": {}, "after": view.show(config)}
    info = await create(config)
    after = info.config.as_dict()
    return True, {kind: after, "changed_settings": settings, "state": state(info)}, {"before": {}, "after": view.show(after)}


async def ensure_updated(kind: str, info: Any, after: Dict[str, Any], changed: List[str], check_mode: bool,
                         update: Callable[[Dict[str, Any]], Awaitable[Any]], view: SettingsView,
                         state: Callable[[Any], Dict[str, Any]]) -> Outcome:
    """State present of a stream or consumer that exists (``info``): ``update(after)`` when the API fields ``changed``,
    not in check mode. The result names it ``kind``, with ``state(info)``; the diff shows the settings the user set
    as ``view`` reads them."""
    before = info.config.as_dict()
    if changed and not check_mode:
        info = await update(after)
        after = info.config.as_dict()
    return bool(changed), {kind: after, "changed_settings": view.options(changed), "state": state(info)}, {
        "before": view.show(before), "after": view.show(after)}


async def stream_config(js: Any, stream: str) -> Optional[Dict[str, Any]]:
    """The configuration of a stream as a dict, or None when it does not exist."""
    from nats.js import errors  # pylint: disable=import-outside-toplevel
    try:
        return (await js.stream_info(stream)).config.as_dict()
    except errors.NotFoundError:
        return None


def check_bucket_task(module: AnsibleModule, fields: Dict[str, str], item_options: Iterable[str], item: str) -> None:
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


async def ensure_bucket(js: Any, stream: str, bucket: str, wanted: Dict[str, Any], check_mode: bool,
                        create: Callable[[Dict[str, Any]], Awaitable[Any]], delete: Callable[[], Awaitable[Any]],
                        absent: bool, view: SettingsView) -> Outcome:
    """Make the bucket stored in ``stream`` exist with ``wanted`` settings, or not exist (``absent``).

    ``create(settings)`` and ``delete()`` make and remove the bucket with the client's own bucket API (so the stream
    gets every setting a bucket needs); ``settings`` are the common ones as that API takes them (description,
    replicas, max_bytes, ttl in seconds, storage). Later changes update the stream. ``view`` shows the settings
    by option name, in the user's units.
    Returns (changed, {"bucket": stream config after, "changed_settings": [...]}, diff)."""
    from nats.js.api import StorageType, StreamConfig  # pylint: disable=import-outside-toplevel
    before = await stream_config(js, stream)
    if absent:
        return await ensure_absent("bucket", before, check_mode, delete, shown={"bucket": bucket})
    managed = {k: v for k, v in wanted.items() if v is not None}
    if before is None:
        after = {}
        if not check_mode:
            await create({"description": wanted["description"], "replicas": wanted["num_replicas"] or 1,
                          "max_bytes": wanted["max_bytes"], "ttl": wanted["max_age"] / 1e9 if wanted["max_age"] else None,
                          "storage": StorageType(wanted["storage"]) if wanted["storage"] else None})
            after = await stream_config(js, stream)
        return True, {"bucket": after, "changed_settings": view.options(managed) or ["state"]}, {
            "before": {}, "after": dict(view.show(managed), bucket=bucket)}
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
    return bool(changed), {"bucket": after, "changed_settings": view.options(changed)}, {
        "before": view.show(before), "after": view.show(managed)}
