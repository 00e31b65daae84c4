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
import base64
import json
import logging
import os
import re
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


# asyncio's SSL transport (sslproto) logs this warning on the "asyncio" logger whenever the protocol under it returns
# true from eof_received(). nats-py opens every TLS connection plain and upgrades it with loop.start_tls, so the
# StreamReaderProtocol under it believes it is not over SSL and returns true each time a server closes a TLS
# connection (a refused login, a closed client): noise with nothing to act on, printed by every ansible-inventory,
# ansible-playbook and executor run over TLS. Exactly this message is filtered, nothing else of asyncio's.
SSL_EOF_WARNING = "returning true from eof_received() has no effect when using ssl"


class _SslEofWarningFilter(logging.Filter):
    """Drops asyncio's SSL_EOF_WARNING; every other record passes."""

    natsops_ssl_eof = True

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == SSL_EOF_WARNING and not record.args)


def quiet_ssl_eof_warning() -> None:
    """Filter asyncio's SSL_EOF_WARNING in this process (once; called by ``connect``)."""
    logger = logging.getLogger("asyncio")
    if not any(getattr(f, "natsops_ssl_eof", False) for f in logger.filters):
        logger.addFilter(_SslEofWarningFilter())


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


def _nats_config_dir() -> str:
    """natscli's configuration directory (ADR-21): ``$XDG_CONFIG_HOME/nats``, by default ``~/.config/nats``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "nats")


def context_path(name: str) -> str:
    return os.path.join(_nats_config_dir(), "context", "%s.json" % name)


def selected_context() -> Optional[str]:
    """The context natscli has selected (``nats context select``): the name in ``context.txt``, or None."""
    try:
        with open(os.path.join(_nats_config_dir(), "context.txt"), "rb") as handle:
            name = handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return None
    return name or None


# natscli context fields this client cannot honour, and what to do instead
_UNSUPPORTED_CONTEXT_FIELDS = {
    "nsc": "set creds to the file 'nsc generate creds' writes",
    "user_jwt": "use a creds file",
    "jetstream_api_prefix": "use jetstream_domain, or a context without an API prefix",
    "windows_cert_store": "use ca, cert and key files",
}
_AUTH_OPTIONS = ("user", "password", "token", "creds", "nkey")


def load_context(name: str) -> Dict[str, Any]:
    """Read a natscli context and return it as our option names (and ``tls_first``)."""
    path = context_path(name)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConnectOptionsError("cannot read NATS context %r from %s: %s" % (name, path, exc)) from exc
    if not isinstance(data, dict):
        raise ConnectOptionsError("NATS context %s is not a JSON object" % path)
    for field, instead in _UNSUPPORTED_CONTEXT_FIELDS.items():
        if data.get(field):
            raise ConnectOptionsError("NATS context %r (%s) sets %r, which natsops.fleet does not read: %s"
                                      % (name, path, field, instead))
    found = {opt: data[field] for opt, (field, _env) in OPTION_SOURCES.items() if field and data.get(field)}
    if data.get("tls_first"):
        found["tls_first"] = True
    return found


def _readable(option: str, path: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConnectOptionsError("option %r: file %s does not exist" % (option, path))
    if not os.access(path, os.R_OK):
        raise ConnectOptionsError("option %r: file %s is not readable by this user" % (option, path))
    return path


def _credential(option: str, value: str) -> Any:
    """A creds or nkey value: a file path, or a natscli credential URI (ADR-21): ``file://PATH``, ``env://NAME``
    (the content in an environment variable) or ``data:;base64,...`` (the content inline). Returns the readable path,
    or the content as a :class:`Credential`."""
    if value.startswith("file://"):
        return _readable(option, value[len("file://"):])
    if value.startswith("env://"):
        variable = value[len("env://"):]
        if not os.environ.get(variable):
            raise ConnectOptionsError("option %r: environment variable %s is not set" % (option, variable))
        return Credential(os.environ[variable])
    if value.startswith("data:"):
        meta, _comma, payload = value[len("data:"):].partition(",")
        try:
            content = base64.b64decode(payload, validate=True) if meta.endswith(";base64") else payload.encode()
            return Credential(content.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConnectOptionsError("option %r: the data: URI is not valid base64 text" % option) from exc
    scheme = value.partition("://")[0] if "://" in value else ""
    if scheme:
        raise ConnectOptionsError("option %r: credential URI scheme %s:// is not supported here (file://, env:// and "
                                  "data: are); write the credentials to a file and give its path" % (option, scheme))
    return _readable(option, value)


class Credential(str):
    """Credential content (not a path) from an env:// or data: URI; never shown in full."""

    def __repr__(self) -> str:
        return "<credential>"


def resolve(options: Mapping[str, Any], policy: str = SESSION) -> Dict[str, Any]:
    """Fill unset options from a natscli context as natscli does: the ``context`` option (or NATS_CONTEXT), else the
    selected context of ``context.txt`` (for callers; a SERVICE reads only the context it is given); explicit options win, and the context's
    credentials are used only when no credentials are given explicitly. Then validate the combination."""
    opts = {k: v for k, v in options.items() if v not in (None, "", [])}
    context = opts.get("context") or (selected_context() if policy != SERVICE else None)
    if context:
        explicit_auth = any(opts.get(k) for k in _AUTH_OPTIONS)
        explicit_cert = bool(opts.get("cert") or opts.get("key"))
        for key, value in load_context(context).items():
            if (explicit_auth and key in _AUTH_OPTIONS) or (explicit_cert and key in ("cert", "key")):
                continue
            opts.setdefault(key, value)
        opts["context"] = context
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
    for option in ("creds", "nkey"):
        if opts.get(option) and not isinstance(opts[option], Credential):
            opts[option] = _credential(option, str(opts[option]))
    for option in ("ca", "cert", "key"):
        if opts.get(option):
            opts[option] = _readable(option, opts[option])
    if opts.get("jetstream_domain"):
        domain = str(opts["jetstream_domain"])
        if not re.match(r"^[A-Za-z0-9_-]+$", domain):
            raise ConnectOptionsError("option 'jetstream_domain': %r is not a JetStream domain name (letters, digits, "
                                      "'-' and '_')" % domain)
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
    opts = resolve(options, policy)
    kwargs: Dict[str, Any] = {"servers": opts["servers"], "name": name, "connect_timeout": connect_timeout}
    kwargs.update(POLICIES[policy])
    if opts.get("user"):
        kwargs["user"] = opts["user"]
        kwargs["password"] = opts["password"]
    if opts.get("token"):
        kwargs["token"] = opts["token"]
    if opts.get("creds"):
        kwargs["user_credentials"] = opts["creds"]  # a path, or a Credential (content) that connect() passes as such
    if isinstance(opts.get("nkey"), Credential):
        kwargs["nkeys_seed_str"] = opts["nkey"]
    elif opts.get("nkey"):
        kwargs["nkeys_seed"] = opts["nkey"]
    if opts.get("inbox_prefix"):
        kwargs["inbox_prefix"] = opts["inbox_prefix"]
    ctx = tls_context(opts)
    if ctx is not None:
        kwargs["tls"] = ctx
        if opts.get("tls_hostname"):
            kwargs["tls_hostname"] = opts["tls_hostname"]
        if opts.get("tls_first"):
            kwargs["tls_handshake_first"] = True
    if opts.get("jetstream_domain"):
        kwargs["jetstream_domain"] = opts["jetstream_domain"]  # not nats.connect's: connect() keeps it on the client
    return kwargs


async def connect(options: Mapping[str, Any], name: str, connect_timeout: float, policy: str = SESSION,
                  **callbacks: Callable[..., Any]) -> Any:
    """A connected nats-py client. ``callbacks`` are nats.connect's (error_cb, disconnected_cb, ...).

    Its ``jetstream()`` uses the ``jetstream_domain`` option unless a caller names a domain or prefix itself.
    Raises ConnectOptionsError for bad options and NatsConnectError when no server could be connected to, naming
    the cause the servers gave (a refused login says so). Filters asyncio's SSL_EOF_WARNING. Except for a SERVICE, the whole attempt is bounded by a
    connect timeout per server plus one (nats-py alone may retry a list of dead servers for minutes)."""
    kwargs = connect_kwargs(options, name, connect_timeout, policy)
    quiet_ssl_eof_warning()  # also when a nats:// URL is upgraded because the server requires TLS
    domain = kwargs.pop("jetstream_domain", None)
    errors: List[BaseException] = []
    user_error_cb = callbacks.pop("error_cb", None)

    async def error_cb(exc: BaseException) -> None:
        errors.append(exc)
        del errors[:-8]
        if user_error_cb is not None:
            await user_error_cb(exc)

    kwargs.update(callbacks, error_cb=error_cb)
    bound = None if policy == SERVICE else connect_timeout * (len(kwargs["servers"]) + 1) + 1
    # imported here: the standard library is enough until a connection is made
    from nats.aio.client import Client, RawCredentials  # pylint: disable=import-outside-toplevel

    if isinstance(kwargs.get("user_credentials"), Credential):
        kwargs["user_credentials"] = RawCredentials(str(kwargs["user_credentials"]))

    class _Client(Client):  # type: ignore[misc,valid-type]
        def jetstream(self, **opts: Any) -> Any:
            if domain and "domain" not in opts and "prefix" not in opts:
                opts["domain"] = domain
            return super().jetstream(**opts)

    nc = _Client()
    try:
        await asyncio.wait_for(nc.connect(**kwargs), bound)
    except Exception as exc:  # nats-py raises a zoo of exception types here
        raise NatsConnectError(connect_failure(options, policy, exc, errors)) from exc
    if policy == SERVICE:
        nc.options["max_reconnect_attempts"] = -1  # connected once: from now on, reconnect forever
    return nc


# what NATS servers say when they refuse a client's credentials (nats-server's -ERR texts)
_AUTH_REFUSALS = ("authorization violation", "authentication timeout", "user authentication expired",
                  "user authentication revoked", "account authentication expired")


def connect_failure(options: Mapping[str, Any], policy: str, exc: BaseException, errors: List[BaseException]) -> str:
    """Why no server could be connected to, in words: the servers' refusal of our credentials when that is what
    happened (nats-py then reports only "no servers available"), else the last cause it saw."""
    seen = [str(e) or type(e).__name__ for e in errors + [exc]]
    how = describe(options, policy)
    refusal = next((text for text in seen for words in _AUTH_REFUSALS if words in text.lower()), None)
    if refusal is not None:
        return ("cannot connect to NATS (%s): the server refused the credentials (%s); check the user name and "
                "password, token, creds or nkey file of this connection" % (how, refusal.replace("nats: ", "").strip("'")))
    causes = [text for text in seen if "no servers available" not in text]
    cause = causes[-1] if causes else seen[-1]
    return "cannot connect to NATS (%s): %s" % (how, cause)


def describe(options: Mapping[str, Any], policy: str = SESSION) -> str:
    """A one-line, secret-free description of how we connect (for logs and errors)."""
    try:
        opts = resolve(options, policy)
    except ConnectOptionsError:
        opts = dict(options)
        opts["servers"] = server_list(opts.get("servers"))
    auth = next((m for m in ("creds", "nkey", "token", "user") if opts.get(m)), "none")
    if auth == "user":
        auth = "user %s" % opts["user"]
    tls = "on" if any(opts.get(k) for k in ("ca", "cert")) or any(
        str(s).startswith("tls://") for s in opts["servers"]) else "off"
    text = "servers=%s auth=%s tls=%s" % (",".join(opts["servers"]), auth, tls)
    if opts.get("context"):
        text += " context=%s" % opts["context"]
    if opts.get("jetstream_domain"):
        text += " jetstream_domain=%s" % opts["jetstream_domain"]
    return text
