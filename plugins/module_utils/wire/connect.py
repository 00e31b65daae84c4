# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How every part connects to NATS: servers, every auth method of the ecosystem, TLS, and what happens
when a server goes away.

``connect(options, name, policy)`` is the one connect path: the user-facing option names (the same for the
connection plugin, the modules, the plugins and the executor) become ``nats.connect`` arguments
(``connect_kwargs``), with the reconnect behaviour of the caller's ``policy``:

- ``ONE_SHOT`` (modules, lookup, inventory): one attempt per server, no reconnects; a run fails fast.
- ``SESSION`` (the connection plugin's control process, the executor modules' client): a couple of quick
  reconnects, so a server restart does not fail a task that was about to finish.
- ``SERVICE`` (the executor): the first connect gives up after a few attempts (bad credentials must end the
  process with a clear message); once connected it reconnects forever.

Problems are reported as ConnectOptionsError (the options) or NatsConnectError (the server) with a message
that names the servers and the auth method, never a secret. Standard library only; nats-py is imported by
``connect`` when it is called.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional

from .names import OPTION_NAMES, OPTION_SOURCES, WireError, validate_inbox_prefix  # noqa: F401  pylint: disable=unused-import

ONE_SHOT = "one_shot"
SESSION = "session"
SERVICE = "service"
# reconnect settings of nats.connect, by policy; nats-py counts max_reconnect_attempts=0 as unlimited
POLICIES: Dict[str, Dict[str, Any]] = {
    ONE_SHOT: {"allow_reconnect": False, "max_reconnect_attempts": 1, "reconnect_time_wait": 0.5},
    SESSION: {"allow_reconnect": True, "max_reconnect_attempts": 2, "reconnect_time_wait": 0.5},
    SERVICE: {"allow_reconnect": True, "max_reconnect_attempts": 2, "reconnect_time_wait": 1.0},
}
DEFAULT_SERVER = "nats://127.0.0.1:4222"


class ConnectOptionsError(ValueError):
    """A NATS connection option is missing, contradictory or points at an unreadable file."""


class NatsConnectError(ConnectionError):
    """No NATS server of the list could be connected to (the message says which and why, never a secret)."""


def split_servers(value: Any) -> List[str]:
    """Accept a list or a comma/space separated string; return a list of URLs."""
    if value is None:
        return []
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    servers = [str(v).strip() for v in value if str(v).strip()]
    for url in servers:
        if "://" not in url:
            raise ConnectOptionsError("server %r needs a scheme, for example nats://%s or tls://%s" % (url, url, url))
    return servers


def server_list(value: Any) -> List[str]:
    """split_servers, falling back to the loopback default when nothing is given."""
    return split_servers(value) or [DEFAULT_SERVER]


def context_path(name: str) -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "nats", "context", "%s.json" % name)


def load_context(name: str) -> Dict[str, Any]:
    """Read a natscli context and return it as our option names."""
    path = context_path(name)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConnectOptionsError("cannot read NATS context %r from %s: %s" % (name, path, exc)) from exc
    if not isinstance(data, dict):
        raise ConnectOptionsError("NATS context %s is not a JSON object" % path)
    return {opt: data[field] for opt, (field, _env) in OPTION_SOURCES.items() if field and data.get(field)}


def _readable(option: str, path: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConnectOptionsError("option %r: file %s does not exist" % (option, path))
    if not os.access(path, os.R_OK):
        raise ConnectOptionsError("option %r: file %s is not readable by this user" % (option, path))
    return path


def resolve(options: Mapping[str, Any]) -> Dict[str, Any]:
    """Fill unset options from the natscli context (if ``context`` is set); validate combinations."""
    opts = {k: v for k, v in options.items() if v not in (None, "", [])}
    if opts.get("context"):
        for key, value in load_context(opts["context"]).items():
            opts.setdefault(key, value)
    opts["servers"] = server_list(opts.get("servers"))
    methods = [m for m in ("user", "token", "creds", "nkey") if opts.get(m)]
    if len(methods) > 1:
        raise ConnectOptionsError("choose one NATS authentication method, got %s" % " and ".join(methods))
    if opts.get("password") and not opts.get("user"):
        raise ConnectOptionsError("option 'password' is set but 'user' is not")
    if opts.get("user") and not opts.get("password"):
        raise ConnectOptionsError("option 'user' is set but 'password' is not")
    if bool(opts.get("cert")) != bool(opts.get("key")):
        raise ConnectOptionsError("options 'cert' and 'key' (client TLS certificate) must be given together")
    for option in ("creds", "nkey", "ca", "cert", "key"):
        if opts.get(option):
            opts[option] = _readable(option, opts[option])
    if opts.get("inbox_prefix"):
        try:
            validate_inbox_prefix(opts["inbox_prefix"])
        except WireError as exc:
            raise ConnectOptionsError("option 'inbox_prefix': %s" % exc.message)
    return opts


def tls_context(opts: Mapping[str, Any]) -> Optional[Any]:
    """An SSLContext when any TLS option or a tls:// server asks for one, else None."""
    wants_tls = any(opts.get(k) for k in ("ca", "cert", "tls_hostname")) or any(
        s.startswith("tls://") for s in opts["servers"])
    if not wants_tls:
        return None
    # imported here: only TLS users pay for it
    import ssl  # pylint: disable=import-outside-toplevel
    try:
        ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=opts.get("ca"))
        if opts.get("cert"):
            ctx.load_cert_chain(opts["cert"], opts["key"])
    except (OSError, ssl.SSLError) as exc:
        raise ConnectOptionsError("cannot load TLS files (ca/cert/key): %s" % exc) from exc
    return ctx


def connect_kwargs(options: Mapping[str, Any], name: str, connect_timeout: float = 5.0,
                   policy: str = SESSION) -> Dict[str, Any]:
    """Keyword arguments for ``nats.connect`` from our option names, with the reconnects of ``policy``."""
    opts = resolve(options)
    kwargs: Dict[str, Any] = {"servers": opts["servers"], "name": name, "connect_timeout": connect_timeout}
    kwargs.update(POLICIES[policy])
    if opts.get("user"):
        kwargs["user"] = opts["user"]
        kwargs["password"] = opts["password"]
    if opts.get("token"):
        kwargs["token"] = opts["token"]
    if opts.get("creds"):
        kwargs["user_credentials"] = opts["creds"]
    if opts.get("nkey"):
        kwargs["nkeys_seed"] = opts["nkey"]
    if opts.get("inbox_prefix"):
        kwargs["inbox_prefix"] = opts["inbox_prefix"]
    ctx = tls_context(opts)
    if ctx is not None:
        kwargs["tls"] = ctx
        if opts.get("tls_hostname"):
            kwargs["tls_hostname"] = opts["tls_hostname"]
    return kwargs


async def connect(options: Mapping[str, Any], name: str, connect_timeout: float, policy: str = SESSION,
                  **callbacks: Callable[..., Any]) -> Any:
    """A connected nats-py client. ``callbacks`` are nats.connect's (error_cb, disconnected_cb, ...).

    Raises ConnectOptionsError for bad options and NatsConnectError when no server could be connected to. Except
    for a SERVICE, the whole attempt is bounded by a connect timeout per server plus one (nats-py alone may retry
    a list of dead servers for minutes)."""
    kwargs = connect_kwargs(options, name, connect_timeout, policy)
    kwargs.update(callbacks)
    bound = None if policy == SERVICE else connect_timeout * (len(kwargs["servers"]) + 1) + 1
    import nats  # pylint: disable=import-outside-toplevel
    try:
        nc = await asyncio.wait_for(nats.connect(**kwargs), bound)
    except Exception as exc:  # nats-py raises a zoo of exception types here
        raise NatsConnectError("cannot connect to NATS (%s): %s" % (describe(options), exc or type(exc).__name__)) from exc
    if policy == SERVICE:
        nc.options["max_reconnect_attempts"] = -1  # connected once: from now on, reconnect forever
    return nc


def describe(options: Mapping[str, Any]) -> str:
    """A one-line, secret-free description of how we connect (for logs and errors)."""
    try:
        opts = resolve(options)
    except ConnectOptionsError:
        opts = dict(options)
        opts["servers"] = server_list(opts.get("servers"))
    auth = next((m for m in ("creds", "nkey", "token", "user") if opts.get(m)), "none")
    if auth == "user":
        auth = "user %s" % opts["user"]
    tls = "on" if any(opts.get(k) for k in ("ca", "cert")) or any(
        str(s).startswith("tls://") for s in opts["servers"]) else "off"
    return "servers=%s auth=%s tls=%s" % (",".join(opts["servers"]), auth, tls)
