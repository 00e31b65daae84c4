# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How both ends connect to NATS: servers, every auth method of the ecosystem, TLS.

``connect_kwargs(options)`` turns the user-facing option names (the same for the
connection plugin, the modules and the executor) into keyword arguments for
``nats.connect``. Problems are reported as ConnectOptionsError naming the option, and
secrets are never part of any message. Standard library only.
"""

from __future__ import annotations

import json
import os

from .names import OPTION_NAMES, OPTION_SOURCES, WireError, validate_inbox_prefix  # noqa: F401  pylint: disable=unused-import

DEFAULT_SERVER = "nats://127.0.0.1:4222"


class ConnectOptionsError(ValueError):
    """A NATS connection option is missing, contradictory or points at an unreadable file."""


def split_servers(value):
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


def server_list(value):
    """split_servers, falling back to the loopback default when nothing is given."""
    return split_servers(value) or [DEFAULT_SERVER]


def context_path(name):
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "nats", "context", "%s.json" % name)


def load_context(name):
    """Read a natscli context and return it as our option names."""
    path = context_path(name)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConnectOptionsError("cannot read NATS context %r from %s: %s" % (name, path, exc))
    if not isinstance(data, dict):
        raise ConnectOptionsError("NATS context %s is not a JSON object" % path)
    return dict((opt, data[field]) for opt, (field, _env) in OPTION_SOURCES.items() if data.get(field))


def _readable(option, path):
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConnectOptionsError("option %r: file %s does not exist" % (option, path))
    if not os.access(path, os.R_OK):
        raise ConnectOptionsError("option %r: file %s is not readable by this user" % (option, path))
    return path


def resolve(options):
    """Fill unset options from the natscli context (if ``context`` is set); validate combinations."""
    opts = dict((k, v) for k, v in options.items() if v not in (None, "", []))
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


def tls_context(opts):
    """An SSLContext when any TLS option or a tls:// server asks for one, else None."""
    wants_tls = any(opts.get(k) for k in ("ca", "cert", "tls_hostname")) or any(
        s.startswith("tls://") for s in opts["servers"])
    if not wants_tls:
        return None
    # imported here: only TLS users pay for it, and the connection plugin imports this module in every worker
    import ssl  # pylint: disable=import-outside-toplevel
    try:
        ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=opts.get("ca"))
        if opts.get("cert"):
            ctx.load_cert_chain(opts["cert"], opts["key"])
    except (OSError, ssl.SSLError) as exc:
        raise ConnectOptionsError("cannot load TLS files (ca/cert/key): %s" % exc)
    return ctx


def connect_kwargs(options, name, connect_timeout=5.0):
    """Keyword arguments for ``nats.connect`` from our option names."""
    opts = resolve(options)
    kwargs = {
        "servers": opts["servers"],
        "name": name,
        "connect_timeout": connect_timeout,
        "allow_reconnect": True,
        "max_reconnect_attempts": 2,
        "reconnect_time_wait": 0.5,
    }
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


def describe(options):
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
