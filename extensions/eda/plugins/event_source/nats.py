# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops.fleet.nats: an ansible-rulebook event source that turns NATS messages into events.

Two modes:

core NATS (``subjects``)
    Subscribes to one or more subjects (wildcards allowed). With ``queue_group`` several rulebook
    instances share the load: each message goes to one of them. At most once, like core NATS itself.

JetStream (``stream`` + ``durable``)
    Reads a durable pull consumer of the stream (created when missing). Each message is acknowledged only
    after the event was put on ansible-rulebook's queue, so a rulebook that stops before queueing an event
    gets it again (at least once). Several rulebook instances using the same durable share the load.

Every event is::

    {"subject": "ops.alerts.disk",
     "data": {...},               # the payload parsed as JSON, else the payload as text (never an error)
     "headers": {"Source": "x"},  # NATS message headers ({} when none)
     "reply": "_INBOX.abc",       # the reply subject, or None (always None in JetStream mode)
     "meta": {"stream": "OPS", "consumer": "eda", "sequence": 42, "delivered": 1}}   # JetStream mode only

Arguments (the NATS connection options are named as in the natsops.fleet.nats connection plugin and the
natsops.fleet modules; each falls back to its environment variable, as there):

  servers         NATS URLs, a list or a comma-separated string; tls:// turns TLS on (NATS_URL,
                  else the context's URL, else nats://127.0.0.1:4222)
  user, password  user name and password (NATS_USER, NATS_PASSWORD)
  token           authentication token (NATS_TOKEN)
  creds           JWT user credentials file (NATS_CREDS)
  nkey            NKey seed file (NATS_NKEY)
  ca              CA certificate(s) to verify the server (NATS_CA)
  cert, key       client certificate and key for mutual TLS (NATS_CERT, NATS_KEY)
  tls_hostname    host name expected in the server certificate (NATS_TLS_HOSTNAME)
  context         natscli context filling the options not set otherwise (NATS_CONTEXT)
  jetstream_domain  JetStream domain of the stream read (NATS_JETSTREAM_DOMAIN)
  inbox_prefix    subject prefix of this client's inboxes (NATS_INBOX_PREFIX)
  connect_timeout seconds to wait for the first connection (default 10)

  subjects        core mode: subject or list of subjects to subscribe to
  queue_group     core mode: queue group shared by the rulebook instances that split the messages

  stream          JetStream mode: the stream to read
  durable         JetStream mode: the durable pull consumer's name (created when missing)
  filter_subject  JetStream mode: only messages of the stream on this subject (wildcards allowed)
  deliver_policy  JetStream mode, new consumers only: all (default), new, last or last_per_subject
  ack_wait        JetStream mode: seconds (or 30s, 5m, 1h) before an unacknowledged message is redelivered
  max_deliver     JetStream mode: how many times a message is delivered at most (-1: no limit)

Bad arguments fail at once with a ValueError naming the option, before any connection. Passwords, tokens and
NKey seeds are never logged nor part of an error. Once connected, the source reconnects for as long as it runs;
when ansible-rulebook stops it, a message taken but not queued is handed back (nak) and the connection drained.

Requirements: nats-py (and nkeys for NKey or JWT authentication) in ansible-rulebook's Python.

Example rulebook::

    - name: React to fleet events
      hosts: all
      sources:
        - name: deployment requests, shared by every rulebook instance
          natsops.fleet.nats:
            servers: nats://nats.example.com:4222
            user: eda
            password: "{{ nats_password }}"
            stream: DEPLOYS
            durable: eda-deploy
            filter_subject: deploy.requests.>
        - name: alerts, at most once
          natsops.fleet.nats:
            servers: nats://nats.example.com:4222
            creds: /etc/eda/nats.creds
            subjects: [ops.alerts.>]
            queue_group: eda
      rules:
        - name: Deploy what was asked for
          condition: event.data.release is defined
          action:
            run_playbook:
              name: deploy.yml
        - name: Show critical alerts
          condition: event.data.severity == "critical"
          action:
            print_event:
              pretty: true

Run this file directly to print the events of a subject (a JSON object of arguments as the first argument)::

    python nats.py '{"servers": "nats://127.0.0.1:4222", "subjects": "ops.>"}'
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import importlib.util
import json
import logging
import os
import re
import sys
from types import ModuleType
from typing import Any, Dict, Iterable, List, Optional

if __name__ == "__main__" and sys.path and os.path.realpath(sys.path[0] or ".") == os.path.dirname(os.path.realpath(__file__)):
    # run as a script: this file's folder comes first on sys.path, and this file would shadow nats-py
    del sys.path[0]

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    HAS_NATS = True
except ImportError:  # reported by main()
    HAS_NATS = False

LOG = logging.getLogger("natsops.fleet.nats")
CLIENT_NAME = "natsops.fleet.nats event source"
WIRE_FALLBACK_PACKAGE = "_natsops_fleet_eda_wire"
FETCH_TIMEOUT = 5.0
RETRY_SECONDS = (1, 2, 5, 10, 30)
DELIVER_POLICIES = ("all", "new", "last", "last_per_subject")
SOURCE_OPTIONS = ("subjects", "queue_group", "stream", "durable", "filter_subject", "deliver_policy", "ack_wait",
                  "max_deliver", "connect_timeout")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_URL_USERINFO_RE = re.compile(r"(://)[^/@\s]+@")


def _load_wire() -> ModuleType:
    """The collection's connection-option code (plugins/module_utils/wire/connect.py).

    ansible-rulebook runs event sources with runpy.run_path and installs no collection loader, so the
    ``ansible_collections`` package is importable only when a collections folder happens to be on sys.path.
    Otherwise the same files are loaded from this collection, found relative to this file. They are standard
    library only; the executor wheel ships them the same way (natsops_executor._wire)."""
    try:
        return importlib.import_module("ansible_collections.natsops.fleet.plugins.module_utils.wire.connect")
    except ImportError:
        pass
    name = WIRE_FALLBACK_PACKAGE + ".connect"
    if name in sys.modules:
        return sys.modules[name]
    root = os.path.abspath(__file__)
    for _level in range(5):  # event_source, plugins, eda, extensions, <collection>
        root = os.path.dirname(root)
    wire_dir = os.path.join(root, "plugins", "module_utils", "wire")
    spec = importlib.util.spec_from_file_location(WIRE_FALLBACK_PACKAGE, os.path.join(wire_dir, "__init__.py"),
                                                  submodule_search_locations=[wire_dir])
    if spec is None or not os.path.isfile(os.path.join(wire_dir, "connect.py")):
        raise ImportError("natsops.fleet.nats: cannot find the collection's plugins/module_utils/wire in %s" % root)
    package = importlib.util.module_from_spec(spec)
    sys.modules[WIRE_FALLBACK_PACKAGE] = package
    spec.loader.exec_module(package)
    return importlib.import_module(name)


WIRE = _load_wire()


class SourceArgumentError(ValueError):
    """An argument of the event source is missing, wrong or contradictory (the message names it)."""


class SourceConnectionError(ConnectionError):
    """NATS could not be reached, refused us, or closed the connection for good."""


# ------------------------------------------------------------------ arguments


def _redact(text: Any, secrets: Iterable[Optional[str]] = ()) -> str:
    """Text without the given secret values nor credentials written into a URL (defence in depth: no message is
    built with a secret in it; secrets shorter than 4 characters would only mangle the text)."""
    text = _URL_USERINFO_RE.sub(r"\1***@", str(text))
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _string(args: Dict[str, Any], option: str) -> Optional[str]:
    value = args.get(option)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SourceArgumentError("natsops.fleet.nats: option %r must be a string, got %s" % (option, type(value).__name__))
    return str(value)


def _subject(option: str, value: Any, wildcards: bool = True) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SourceArgumentError("natsops.fleet.nats: option %r: subjects must be non-empty strings, got %r" % (option, value))
    tokens = value.split(".")
    for index, token in enumerate(tokens):
        if not token or any(c.isspace() for c in token):
            raise SourceArgumentError("natsops.fleet.nats: option %r: %r is not a valid subject (empty token or whitespace)"
                                      % (option, value))
        if token in ("*", ">") and not wildcards:
            raise SourceArgumentError("natsops.fleet.nats: option %r: %r may not contain wildcards" % (option, value))
        if token == ">" and index != len(tokens) - 1:
            raise SourceArgumentError("natsops.fleet.nats: option %r: '>' must be the last token of %r" % (option, value))
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise SourceArgumentError("natsops.fleet.nats: option %r: %r uses '*' or '>' inside a token" % (option, value))
    return value


def _subjects(value: Any) -> List[str]:
    if isinstance(value, str):
        value = value.replace(",", " ").split() or [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise SourceArgumentError("natsops.fleet.nats: option 'subjects' must be a subject or a non-empty list of subjects")
    return [_subject("subjects", s) for s in value]


def _seconds(option: str, value: Any, default: Optional[float] = None) -> Optional[float]:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        value = "bad"
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise SourceArgumentError("natsops.fleet.nats: option %r must be a number of seconds (or 500ms, 30s, 5m, 1h), got %r"
                                      % (option, value))
        seconds = float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    if seconds <= 0:
        raise SourceArgumentError("natsops.fleet.nats: option %r must be more than 0 seconds, got %r" % (option, value))
    return seconds


def _max_deliver(value: Any) -> Optional[int]:
    if value is None or value == "":
        return None
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if isinstance(value, bool) or (number < 1 and number != -1):
        raise SourceArgumentError("natsops.fleet.nats: option 'max_deliver' must be a whole number of at least 1, or -1 "
                                  "for no limit, got %r" % (value,))
    return number


def _connection_options(args: Dict[str, Any]) -> Dict[str, Any]:
    """The connection options, each from the arguments, else from its environment variable."""
    options = {}
    for option in WIRE.OPTION_NAMES:
        if option == "servers":
            value = args.get("servers")
            if value is not None and not isinstance(value, (str, list, tuple)):
                raise SourceArgumentError("natsops.fleet.nats: option 'servers' must be a URL or a list of URLs")
        else:
            value = _string(args, option)
        env = WIRE.OPTION_SOURCES[option][1]
        if value in (None, "", []) and os.environ.get(env):
            value = os.environ[env]
        options[option] = value
    return options


class Settings:
    """The checked arguments of one event source."""

    def __init__(self, args: Dict[str, Any]) -> None:
        if not isinstance(args, dict):
            raise SourceArgumentError("natsops.fleet.nats: the arguments must be a mapping, got %s" % type(args).__name__)
        known = set(WIRE.OPTION_NAMES) | set(SOURCE_OPTIONS)
        for option in args:
            if option in known or str(option).startswith("eda_"):  # eda_feedback_queue and friends: ansible-rulebook's own
                continue
            close = difflib.get_close_matches(str(option), sorted(known), n=1)
            raise SourceArgumentError("natsops.fleet.nats: unknown option %r%s; the options are: %s" % (
                option, " (did you mean %r?)" % close[0] if close else "", ", ".join(sorted(known))))
        self.options = _connection_options(args)
        self.secrets = [self.options.get("password"), self.options.get("token")]
        self.connect_timeout = _seconds("connect_timeout", args.get("connect_timeout"), 10.0)
        self.stream = _string(args, "stream")
        self.durable = _string(args, "durable")
        self.jetstream = bool(self.stream or self.durable)
        self.subjects = []
        self.queue_group = _string(args, "queue_group")
        self.consumer = {}
        if self.jetstream:
            self._jetstream(args)
        else:
            self._core(args)
        # the connection options last: they read files, and the errors above are the likelier ones (a service: the
        # context selected with `nats context select` is not read, only one named by option or NATS_CONTEXT)
        try:
            WIRE.resolve(self.options, WIRE.SERVICE)
        except WIRE.ConnectOptionsError as exc:
            text = _redact(exc, self.secrets)
            where = "option 'servers': " if text.startswith("server ") else ""
            raise SourceArgumentError("natsops.fleet.nats: %s%s" % (where, text)) from None  # the cause may hold a secret
        self.description = _redact(WIRE.describe(self.options, WIRE.SERVICE), self.secrets)

    def _core(self, args: Dict[str, Any]) -> None:
        jetstream_only = [o for o in ("filter_subject", "deliver_policy", "ack_wait", "max_deliver") if args.get(o) is not None]
        if jetstream_only:
            raise SourceArgumentError("natsops.fleet.nats: option %r is for JetStream; set 'stream' and 'durable' as well"
                                      % jetstream_only[0])
        if args.get("subjects") in (None, "", []):
            raise SourceArgumentError("natsops.fleet.nats: set option 'subjects' (core NATS) or options 'stream' and "
                                      "'durable' (a JetStream durable consumer)")
        self.subjects = _subjects(args["subjects"])
        if self.queue_group is not None and not _NAME_RE.match(self.queue_group.replace(".", "_")):
            raise SourceArgumentError("natsops.fleet.nats: option 'queue_group' %r may contain letters, digits, '.', '_' "
                                      "and '-' only" % self.queue_group)

    def _jetstream(self, args: Dict[str, Any]) -> None:
        for option in ("stream", "durable"):
            if not getattr(self, option):
                raise SourceArgumentError("natsops.fleet.nats: option %r is required with %r (a JetStream durable consumer)"
                                          % (option, "durable" if option == "stream" else "stream"))
            if not _NAME_RE.match(getattr(self, option)):
                raise SourceArgumentError("natsops.fleet.nats: option %r %r may contain letters, digits, '_' and '-' only"
                                          % (option, getattr(self, option)))
        if args.get("subjects") not in (None, "", []):
            raise SourceArgumentError("natsops.fleet.nats: option 'subjects' is for core NATS; with 'stream' use "
                                      "'filter_subject' to read part of the stream")
        if self.queue_group is not None:
            raise SourceArgumentError("natsops.fleet.nats: option 'queue_group' is for core NATS; rulebook instances "
                                      "using the same 'durable' share the messages of a stream")
        filter_subject = _string(args, "filter_subject")
        if filter_subject is not None:
            self.consumer["filter_subject"] = _subject("filter_subject", filter_subject)
        policy = _string(args, "deliver_policy")
        if policy is not None:
            if policy not in DELIVER_POLICIES:
                raise SourceArgumentError("natsops.fleet.nats: option 'deliver_policy' must be one of %s, got %r"
                                          % (", ".join(DELIVER_POLICIES), policy))
            self.consumer["deliver_policy"] = policy
        ack_wait = _seconds("ack_wait", args.get("ack_wait"))
        if ack_wait is not None:
            self.consumer["ack_wait"] = ack_wait
        max_deliver = _max_deliver(args.get("max_deliver"))
        if max_deliver is not None:
            self.consumer["max_deliver"] = max_deliver


# ------------------------------------------------------------------ events


def _decode(payload: bytes) -> Any:
    """Parsed JSON when the payload is JSON, else the payload as text; never an error."""
    if not payload:
        return ""
    try:
        return json.loads(payload)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return payload.decode("utf-8", "backslashreplace")


def make_event(msg: Any, jetstream: bool = False) -> Dict[str, Any]:
    """The event for one NATS message."""
    event = {"subject": msg.subject, "data": _decode(msg.data), "headers": dict(msg.headers or {}),
             "reply": None if jetstream else (msg.reply or None)}
    if jetstream:
        md = msg.metadata
        event["meta"] = {"stream": md.stream, "consumer": md.consumer, "sequence": md.sequence.stream,
                         "delivered": md.num_delivered}
    return event


# ------------------------------------------------------------------ the source


class NatsSource:
    """One connection, one subscription (core) or pull consumer (JetStream), events to the queue."""

    def __init__(self, settings: Settings, queue: asyncio.Queue) -> None:
        self.cfg = settings
        self.queue = queue
        self.nc = None
        self.closed = asyncio.Event()
        self.errors = []
        self.unqueued = None  # a JetStream message taken from the server and not yet on the queue
        self.pull = None  # the JetStream pull subscription

    async def run(self) -> None:
        await self.connect()
        if self.cfg.jetstream:
            await self.consume_jetstream()
        else:
            await self.subscribe_core()
            await self.closed.wait()
        raise SourceConnectionError("natsops.fleet.nats: the NATS connection closed (%s): %s"
                                    % (self.cfg.description, self.last_error()))

    def last_error(self) -> str:
        return _redact(self.errors[-1], self.cfg.secrets) if self.errors else "no error reported"

    async def _on_error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        self.errors = (self.errors + [text])[-20:]
        LOG.warning("natsops.fleet.nats: NATS error: %s", _redact(text, self.cfg.secrets))

    async def _on_disconnect(self) -> None:
        if not self.closed.is_set():
            LOG.warning("natsops.fleet.nats: disconnected from NATS; reconnecting")

    async def _on_reconnect(self) -> None:
        url = self.nc.connected_url if self.nc is not None else None
        LOG.info("natsops.fleet.nats: reconnected to NATS at %s", url.netloc.rpartition("@")[2] if url else "?")

    async def _on_closed(self) -> None:
        self.closed.set()

    async def connect(self) -> None:
        LOG.info("natsops.fleet.nats: connecting to NATS: %s", self.cfg.description)
        try:
            # SERVICE: the first connection gives up after a few attempts (bad credentials must stop the rulebook
            # with a clear message); from then on it reconnects for as long as the source runs, as the executor does
            self.nc = await WIRE.connect(self.cfg.options, CLIENT_NAME, self.cfg.connect_timeout, WIRE.SERVICE,
                                         error_cb=self._on_error, disconnected_cb=self._on_disconnect,
                                         reconnected_cb=self._on_reconnect, closed_cb=self._on_closed,
                                         ping_interval=30, drain_timeout=5)
        except WIRE.NatsConnectError as exc:
            raise SourceConnectionError("natsops.fleet.nats: %s" % _redact(str(exc), self.cfg.secrets)) from None

    async def subscribe_core(self) -> None:
        async def deliver(msg: Any) -> None:
            await self.queue.put(make_event(msg))

        seen = len(self.errors)
        for subject in self.cfg.subjects:
            await self.nc.subscribe(subject, queue=self.cfg.queue_group or "", cb=deliver)
        await self.nc.flush(timeout=self.cfg.connect_timeout)
        refused = [e for e in self.errors[seen:] if "permissions violation" in e.lower()]
        if refused:
            raise SourceArgumentError("natsops.fleet.nats: option 'subjects': the server refused the subscription: %s"
                                      % refused[0])
        LOG.info("natsops.fleet.nats: listening on %s%s", ", ".join(self.cfg.subjects),
                 " (queue group %s)" % self.cfg.queue_group if self.cfg.queue_group else "")

    async def ensure_consumer(self, js: Any) -> None:
        cfg = self.cfg
        try:
            await js.stream_info(cfg.stream)
        except nats.js.errors.NotFoundError:
            raise SourceArgumentError("natsops.fleet.nats: option 'stream': there is no stream %r (%s)"
                                      % (cfg.stream, cfg.description)) from None
        wanted = dict(cfg.consumer)
        if "deliver_policy" in wanted:
            wanted["deliver_policy"] = DeliverPolicy(wanted["deliver_policy"])
        try:
            info = await js.consumer_info(cfg.stream, cfg.durable)
        except nats.js.errors.NotFoundError:
            info = None
        if info is None:
            config = ConsumerConfig(durable_name=cfg.durable, ack_policy=AckPolicy.EXPLICIT, **wanted)
            await js.add_consumer(cfg.stream, config=config)
            LOG.info("natsops.fleet.nats: created durable pull consumer %s on stream %s", cfg.durable, cfg.stream)
            return
        existing = info.config
        if existing.deliver_subject:
            raise SourceArgumentError("natsops.fleet.nats: option 'durable': consumer %r of stream %r is a push consumer; "
                                      "natsops.fleet.nats needs a pull consumer (choose another name)" % (cfg.durable, cfg.stream))
        if existing.ack_policy != AckPolicy.EXPLICIT:
            raise SourceArgumentError("natsops.fleet.nats: option 'durable': consumer %r of stream %r does not use explicit "
                                      "acknowledgements (ack policy %s)" % (cfg.durable, cfg.stream, existing.ack_policy))
        changes = {k: v for k, v in wanted.items() if getattr(existing, k) != v}
        if changes:
            for key, value in changes.items():
                setattr(existing, key, value)
            try:
                await js.add_consumer(cfg.stream, config=existing)
            except nats.js.errors.APIError as exc:
                raise SourceArgumentError("natsops.fleet.nats: cannot change %s of the existing consumer %r: %s" % (
                    ", ".join(sorted(changes)), cfg.durable, exc.description or exc)) from None
            LOG.info("natsops.fleet.nats: updated %s of consumer %s", ", ".join(sorted(changes)), cfg.durable)

    async def consume_jetstream(self) -> None:
        cfg = self.cfg
        js = self.nc.jetstream()
        await self.ensure_consumer(js)
        self.pull = sub = await js.pull_subscribe_bind(durable=cfg.durable, stream=cfg.stream)
        LOG.info("natsops.fleet.nats: reading stream %s through durable consumer %s", cfg.stream, cfg.durable)
        failures = 0
        while not self.closed.is_set():
            try:
                msgs = await sub.fetch(1, timeout=FETCH_TIMEOUT)
            except nats.errors.TimeoutError:
                failures = 0
                continue
            except nats.errors.ConnectionClosedError:
                break
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                # a server restart, a deleted consumer, a JetStream hiccup: wait, make sure the consumer is there, go on
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                LOG.warning("natsops.fleet.nats: reading consumer %s failed (%s); retrying in %d s",
                            cfg.durable, _redact(exc or type(exc).__name__, cfg.secrets), delay)
                await asyncio.sleep(delay)
                try:
                    await self.ensure_consumer(js)
                except (nats.errors.Error, nats.js.errors.Error, SourceArgumentError, OSError) as again:
                    LOG.warning("natsops.fleet.nats: consumer %s not ready: %s", cfg.durable,
                                _redact(again, cfg.secrets).replace("natsops.fleet.nats: ", "", 1))
                continue
            failures = 0
            for msg in msgs:
                self.unqueued = msg
                await self.queue.put(make_event(msg, jetstream=True))
                self.unqueued = None
                try:
                    await msg.ack()  # only now: the event is on ansible-rulebook's queue
                except nats.errors.Error as exc:
                    LOG.warning("natsops.fleet.nats: cannot acknowledge %s #%s (it will be delivered again): %s",
                                cfg.stream, msg.metadata.sequence.stream, exc)

    async def close(self) -> None:
        """Hand back a message not queued, then drain and close the connection (also when cancelled)."""
        nc, self.nc = self.nc, None
        if nc is None:
            return
        self.closed.set()
        try:
            if self.unqueued is not None and not nc.is_closed:
                await self.unqueued.nak()  # not on the queue: redeliver it now rather than after ack_wait
            if self.pull is not None and not nc.is_closed:
                # nobody reads it any more (a drain would wait for that); the server redelivers what was sent to it
                await self.pull.unsubscribe()
            if nc.is_connected:
                await asyncio.wait_for(nc.drain(), timeout=10)
        except (asyncio.TimeoutError, nats.errors.Error, OSError) as exc:
            LOG.debug("natsops.fleet.nats: drain: %s", exc)
        finally:
            if not nc.is_closed:
                await nc.close()
        LOG.info("natsops.fleet.nats: NATS connection closed")


async def main(queue: asyncio.Queue, args: Dict[str, Any]) -> None:
    """ansible-rulebook's entry point: put an event on ``queue`` for each NATS message, until cancelled."""
    settings = Settings(args)
    if not HAS_NATS:
        raise ImportError("natsops.fleet.nats needs the nats-py package (and nkeys for NKey or JWT authentication) "
                          "in the Python that runs ansible-rulebook: pip install nats-py nkeys")
    source = NatsSource(settings, queue)
    try:
        await source.run()
    finally:
        await source.close()


if __name__ == "__main__":

    class MockQueue(asyncio.Queue):
        """Prints the events instead of queueing them."""

        async def put(self, item: Any) -> None:
            print(json.dumps(item, ensure_ascii=False, default=str), flush=True)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    ARGS = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"subjects": ">"}
    try:
        asyncio.run(main(MockQueue(), ARGS))
    except KeyboardInterrupt:
        pass
