# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""natsops-executor configuration: command line > environment > YAML file > defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional

import yaml

from natsops_executor._wire import connect as wire_connect
from natsops_executor._wire import signing
from natsops_executor._wire.contract import DEFAULT_NAMESPACE, WireError, validate_instance_id, validate_namespace
from natsops_executor._wire.messages import MAX_STDIN_BLOB
from natsops_executor._wire.names import ALL_INSTANCES, OPTION_SOURCES, validate_probe_id
from natsops_executor.payloads import DEFAULT_CAPACITY as DEFAULT_PAYLOAD_CACHE, MAX_CAPACITY as MAX_PAYLOAD_CACHE


class ConfigError(Exception):
    """Bad configuration: the executor refuses to start and says why."""


@dataclasses.dataclass
class Config:
    """The executor's settings, validated (``load``); every field is also a flag, a YAML key and a variable."""

    servers: List[str]
    instances: List[str]
    namespace: str = DEFAULT_NAMESPACE
    name: str = ""
    user: Optional[str] = None
    password: Optional[str] = None
    token: Optional[str] = None
    creds: Optional[str] = None
    nkey: Optional[str] = None
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    tls_hostname: Optional[str] = None
    inbox_prefix: Optional[str] = None
    context: Optional[str] = None
    jetstream_domain: Optional[str] = None
    max_jobs: int = 32
    max_waiting: int = 128
    clock_skew: float = 5.0
    shutdown_grace: float = 10.0
    log_level: str = "INFO"
    bklite_compat: bool = False
    ssh_known_hosts: Optional[str] = None
    ssh_host_key_policy: Optional[str] = None  # host_key_policy(): strict, or accept-new with bklite_compat
    ssh_identities: Optional[Dict[str, str]] = None
    ssh_pool_size: int = 64
    ssh_idle_timeout: float = 300.0
    ssh_connect_timeout: float = 10.0
    register: bool = False
    zone: Optional[str] = None
    heartbeat_interval: float = 30.0
    trusted_signers: Optional[Dict[str, List[str]]] = None
    require_signatures: Optional[bool] = None
    signing_key: Optional[str] = None
    warm: bool = True
    payload_cache: int = DEFAULT_PAYLOAD_CACHE  # bytes of exec stdin ranges kept by digest (payloads.py); 0: off

    def nats_options(self) -> Dict[str, Any]:
        """The NATS connection options, by their names in the wire contract."""
        return {k: getattr(self, k) for k in wire_connect.OPTION_NAMES}

    def result_key(self) -> Optional[signing.SigningKey]:
        """The key this executor signs its replies with: ``signing_key``, else the seed it authenticates with."""
        path = self.signing_key or self.nkey or self.creds
        return signing.SigningKey.from_file(path) if path else None

    def host_key_policy(self) -> str:
        """The SSH host key policy in force: the one configured, else ``strict``, or ``accept-new`` with
        ``bklite_compat`` (BK-Lite adds hosts from its UI and never fills known_hosts; its own executor accepts any
        key, this one learns a key on first contact and refuses a changed one)."""
        if self.ssh_host_key_policy:
            return self.ssh_host_key_policy
        return "accept-new" if self.bklite_compat else "strict"

    def ssh_settings(self) -> Any:
        """SSH mode settings; loads identities and known_hosts (ValueError when they are unusable)."""
        # imported here: paramiko only when the configuration is checked or the service starts
        from natsops_executor import sshpool  # pylint: disable=import-outside-toplevel
        return sshpool.SSHSettings(self.ssh_known_hosts, self.host_key_policy(), self.ssh_identities,
                                   self.ssh_pool_size, self.ssh_idle_timeout, self.ssh_connect_timeout)


# option -> environment variable: the NATS connection options by their names in the wire contract (natscli's
# NATS_* names), the executor's own as NATSOPS_*
ENVIRONMENT = dict({name: env for name, (_context_field, env) in OPTION_SOURCES.items()}, **{
    "instances": "NATSOPS_INSTANCES",
    "namespace": "NATSOPS_NAMESPACE",
    "name": "NATSOPS_NAME",
    "max_jobs": "NATSOPS_MAX_JOBS",
    "max_waiting": "NATSOPS_MAX_WAITING",
    "clock_skew": "NATSOPS_CLOCK_SKEW",
    "shutdown_grace": "NATSOPS_SHUTDOWN_GRACE",
    "log_level": "NATSOPS_LOG_LEVEL",
    "bklite_compat": "NATSOPS_BKLITE_COMPAT",
    "ssh_known_hosts": "NATSOPS_SSH_KNOWN_HOSTS",
    "ssh_host_key_policy": "NATSOPS_SSH_HOST_KEY_POLICY",
    "ssh_identities": "NATSOPS_SSH_IDENTITIES",
    "ssh_pool_size": "NATSOPS_SSH_POOL_SIZE",
    "ssh_idle_timeout": "NATSOPS_SSH_IDLE_TIMEOUT",
    "ssh_connect_timeout": "NATSOPS_SSH_CONNECT_TIMEOUT",
    "register": "NATSOPS_REGISTER",
    "zone": "NATSOPS_ZONE",
    "heartbeat_interval": "NATSOPS_HEARTBEAT_INTERVAL",
    "trusted_signers": "NATSOPS_TRUSTED_SIGNERS",
    "require_signatures": "NATSOPS_REQUIRE_SIGNATURES",
    "signing_key": "NATSOPS_SIGNING_KEY",
    "warm": "NATSOPS_WARM",
    "payload_cache": "NATSOPS_PAYLOAD_CACHE",
})
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# the scalar type each option is coerced to (lists and maps: _PARSERS)
_TYPES = {name: next((t for t in (bool, int, float) if hint is t or hint == Optional[t]), str)
          for name, hint in typing.get_type_hints(Config).items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="natsops-executor",
        description="Serve natsops tasks (exec, put, fetch) from NATS for one or more instance ids.",
        epilog="Every option can also be set in the YAML --config file (same names, '-' as '_') or by "
               "environment: " + ", ".join("%s=$%s" % (k, v) for k, v in ENVIRONMENT.items()),
    )
    add = parser.add_argument
    add("--config", metavar="FILE", default=os.environ.get("NATSOPS_CONFIG"), help="YAML configuration file")
    add("--server", dest="servers", action="append", metavar="URL", help="NATS server URL (repeatable)")
    add("--instance", dest="instances", action="append", metavar="ID",
        help="instance id to serve (repeatable); '*' serves every instance id")
    add("--namespace", help="subject prefix (default %s)" % DEFAULT_NAMESPACE)
    add("--name", help="connection and executor name (default: host name)")
    add("--user")
    add("--password", help="prefer NATS_PASSWORD or the config file: arguments are visible in ps")
    add("--token", help="prefer NATS_TOKEN or the config file: arguments are visible in ps")
    add("--creds", metavar="FILE", help="JWT user credentials file")
    add("--nkey", metavar="FILE", help="NKey seed file")
    add("--ca", metavar="FILE", help="CA certificate(s) to verify the server")
    add("--cert", metavar="FILE", help="client certificate (mutual TLS)")
    add("--key", metavar="FILE", help="client private key (mutual TLS)")
    add("--tls-hostname", dest="tls_hostname")
    add("--inbox-prefix", dest="inbox_prefix", metavar="PREFIX",
        help="subject prefix of this executor's reply inboxes (default _INBOX); with the role's permission model "
             "it is _INBOX.<NATS user name>")
    add("--context", help="natscli context name to read server and auth settings from")
    add("--jetstream-domain", dest="jetstream_domain", metavar="DOMAIN",
        help="JetStream domain of the buckets this executor uses (transfers, registry, audit)")
    add("--max-jobs", dest="max_jobs", type=int, help="jobs run at once (default 32); more wait")
    add("--max-waiting", dest="max_waiting", type=int,
        help="jobs that may wait for a slot (default 128); beyond that requests are refused as busy")
    add("--clock-skew", dest="clock_skew", type=float,
        help="seconds this host's clock may differ from callers' when a request's expiry is checked (default 5)")
    add("--shutdown-grace", dest="shutdown_grace", type=float, help="seconds running jobs get at shutdown")
    add("--log-level", dest="log_level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add("--bklite-compat", dest="bklite_compat", action="store_true", default=None,
        help="also serve the BK-Lite nats-executor subjects")
    add("--ssh-known-hosts", dest="ssh_known_hosts", metavar="FILE",
        help="known_hosts for SSH mode (default ~/.ssh/known_hosts)")
    add("--ssh-host-key-policy", dest="ssh_host_key_policy", choices=("strict", "accept-new", "ignore"),
        help="unknown host keys: refuse (strict, the default), learn (accept-new, the default with --bklite-compat) "
             "or never check (ignore, logged loudly)")
    add("--ssh-identity", dest="ssh_identities", action="append", metavar="NAME=KEYFILE",
        help="a private key callers may name as ssh identity (repeatable); 'default' is used when they name none")
    add("--ssh-pool-size", dest="ssh_pool_size", type=int, help="SSH connections kept for reuse (default 64)")
    add("--ssh-idle-timeout", dest="ssh_idle_timeout", type=float, help="seconds an idle SSH connection is kept (default 300)")
    add("--ssh-connect-timeout", dest="ssh_connect_timeout", type=float, help="SSH connect timeout in seconds (default 10)")
    add("--register", dest="register", action="store_true", default=None,
        help="probe mode: register this host in the registry bucket (<namespace>_registry) under its one instance id "
             "(the node id) and keep the record fresh; the record is deleted when the executor stops")
    add("--zone", help="zone name put in the registry record (with --register)")
    add("--heartbeat-interval", dest="heartbeat_interval", type=float,
        help="seconds between registry heartbeats (default 30; the bucket's TTL should be a few of them)")
    add("--trusted-signer", dest="trusted_signers", action="append", metavar="[INSTANCE=]PUBLIC_KEY",
        help="an NKey public key (U...) whose signed requests this executor runs (repeatable); INSTANCE= limits it "
             "to one instance id; with trusted signers, unsigned requests are refused")
    add("--require-signatures", dest="require_signatures", action="store_true", default=None,
        help="refuse unsigned requests (the default as soon as a trusted signer is configured)")
    add("--signing-key", dest="signing_key", metavar="FILE",
        help="NKey seed this executor signs its replies with, so callers can pin it (default: the seed of --nkey "
             "or --creds)")
    add("--warm", dest="warm", action=argparse.BooleanOptionalAction, default=None,
        help="run pipelined Ansible module runs on this host (agent mode, no become, no pty) from warm interpreters "
             "that imported module_utils once (default on); anything not recognised exactly runs cold")
    add("--payload-cache", dest="payload_cache", type=int, metavar="BYTES",
        help="bytes of module payloads kept by digest, so that callers send a module's zip once (default %d, "
             "32 MiB; 0 turns it off; else at least %d)" % (DEFAULT_PAYLOAD_CACHE, MAX_STDIN_BLOB))
    add("--check-config", dest="check_config", action="store_true",
        help="validate the configuration (flags, environment, --config file) and exit: 0 if usable, 2 if not")
    add("--version", action="store_true", help="print the version and exit")
    return parser


def _from_file(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError("cannot read config file %s: %s" % (path, exc.strerror or exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError("config file %s is not valid YAML: %s" % (path, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError("config file %s must be a mapping of option names to values" % path)
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    # a singular spelling is what people write by hand
    for single, plural in (("server", "servers"), ("instance", "instances")):
        if single in data:
            data.setdefault(plural, data.pop(single))
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError("config file %s: unknown option(s) %s; known: %s" % (path, ", ".join(unknown), ", ".join(sorted(FIELDS))))
    return data


def _from_env(environ: Mapping[str, str]) -> Dict[str, Any]:
    data = {}
    for key, var in ENVIRONMENT.items():
        if environ.get(var):
            data[key] = environ[var]
    return data


def _items(value: Any, split: Callable[[str], List[str]] = lambda text: text.split(",")) -> List[str]:
    """A list, or a string of items (comma-separated unless ``split`` says otherwise)."""
    if isinstance(value, str):
        return split(value)
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise TypeError("a list or a comma-separated string")


def _scalar(kind: type, value: Any) -> Any:
    if kind is bool and not isinstance(value, bool):
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if kind is str:
        return None if value is None else str(value)
    return kind(value)


def _coerce(key: str, value: Any, source: str) -> Any:
    try:
        parse = _PARSERS.get(key)
        return parse(value) if parse is not None else _scalar(_TYPES[key], value)
    except (TypeError, ValueError) as exc:
        raise ConfigError("option %s from %s has a bad value %r: %s" % (key, source, value, exc)) from None


def _signer_map(value: Any) -> Dict[str, List[str]]:
    """Trusted signers as {instance id or '*': [public keys]}, from KEY / INSTANCE=KEY items (a list, or a
    comma-separated string) or a mapping of instance ids to a key or a list of keys."""
    if isinstance(value, dict):
        pairs = [(str(inst), str(key)) for inst, keys in value.items()
                 for key in (keys if isinstance(keys, (list, tuple)) else [keys])]
    else:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)):
            raise TypeError("a list of public keys (KEY or INSTANCE=KEY), or a mapping of instance ids to keys")
        pairs = []
        for item in value:
            inst, sep, key = str(item).strip().rpartition("=")
            pairs.append((inst.strip() if sep else ALL_INSTANCES, key.strip()))
    signers: Dict[str, List[str]] = {}
    for inst, key in pairs:
        if key and key not in signers.setdefault(inst, []):
            signers[inst].append(key)
    return signers


def _name_map(value: Any) -> Dict[str, str]:
    """NAME=PATH pairs (a list, or a comma-separated string) or a mapping -> {name: path}."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        raise TypeError("a mapping of names to key files, or NAME=KEYFILE items")
    result = {}
    for item in value:
        name, sep, path = str(item).strip().partition("=")
        if not sep or not name or not path:
            raise ValueError("%r is not NAME=KEYFILE" % item)
        result[name.strip()] = path.strip()
    return result


# options that are not scalars: how each is read from a flag, a variable or the YAML file
_PARSERS = {
    "servers": lambda value: [v.strip() for v in _items(value, lambda text: text.replace(",", " ").split())],
    "instances": _items,
    "ssh_identities": _name_map,
    "trusted_signers": _signer_map,
}


def load(argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None) -> Config:
    """Parse everything and return a validated Config, or raise ConfigError."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    layers = []
    if args.config:
        layers.append(("config file %s" % args.config, _from_file(args.config)))
    layers.append(("environment", _from_env(environ)))
    layers.append(("command line", {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}))
    merged = {}
    for source, data in layers:
        for key, value in data.items():
            merged[key] = _coerce(key, value, source)
    # no servers: those of --context, else the loopback default (wire_connect.resolve)
    cfg = Config(servers=merged.pop("servers", None) or [],
                 instances=merged.pop("instances", None) or [], **merged)
    return validate(cfg)


def _validate_trust(cfg: Config) -> None:
    """Trusted signers are NKey public keys for instance ids this executor serves; signatures can be required only
    with someone to trust; the signing key can be read (it is loaded again at start)."""
    signers = cfg.trusted_signers or {}
    for inst, keys in signers.items():
        if inst != ALL_INSTANCES and inst not in cfg.instances and ALL_INSTANCES not in cfg.instances:
            raise ConfigError("trusted signers are given for instance id %r, which this executor does not serve" % inst)
        for key in keys:
            problems = signing.public_key_problems(key)
            if problems:
                raise ConfigError("trusted signer: %s" % problems[0])
    if cfg.require_signatures is None:
        cfg.require_signatures = bool(signers)
    elif cfg.require_signatures and not signers:
        raise ConfigError("require_signatures is on but no trusted signer is configured: add --trusted-signer "
                          "PUBLIC_KEY (the controller's NKey public key)")
    try:
        cfg.result_key()
    except signing.SigningError as exc:
        raise ConfigError(str(exc)) from None


def validate(cfg: Config) -> Config:
    """Check a Config as a whole (the start refuses what would not work); returns it normalised."""
    if not cfg.instances:
        raise ConfigError("no instance id to serve: pass --instance ID (repeatable), set instances: in the "
                          "config file or NATSOPS_INSTANCES; use the zone name callers address (e.g. 'default')")
    seen = []
    for inst in cfg.instances:
        try:
            validate_instance_id(inst, allow_all=True)
        except WireError as exc:
            raise ConfigError("bad instance id: %s" % exc.message) from None
        if inst not in seen:
            seen.append(inst)
    cfg.instances = seen
    try:
        validate_namespace(cfg.namespace)
        wire_connect.resolve(cfg.nats_options(), wire_connect.SERVICE)
    except WireError as exc:
        raise ConfigError(exc.message) from None
    except wire_connect.ConnectOptionsError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.register:
        if len(cfg.instances) != 1:
            raise ConfigError("--register (probe mode) serves exactly one instance id, the host's node id; got %s"
                              % ", ".join(cfg.instances))
        try:
            validate_probe_id(cfg.instances[0])
        except WireError as exc:
            raise ConfigError(exc.message) from None
        if not 1 <= cfg.heartbeat_interval <= 3600:
            raise ConfigError("heartbeat_interval must be between 1 and 3600 seconds")
    if cfg.max_jobs < 1 or cfg.max_waiting < 0:
        raise ConfigError("max_jobs must be at least 1 and max_waiting at least 0")
    if not 0 <= cfg.clock_skew <= 3600:
        raise ConfigError("clock_skew must be between 0 and 3600 seconds")
    if cfg.ssh_pool_size < 1 or cfg.ssh_idle_timeout <= 0 or cfg.ssh_connect_timeout <= 0:
        raise ConfigError("ssh_pool_size must be at least 1 and the ssh timeouts positive")
    if cfg.payload_cache != 0 and not MAX_STDIN_BLOB <= cfg.payload_cache <= MAX_PAYLOAD_CACHE:
        raise ConfigError("payload_cache must be 0 (off) or between %d and %d bytes" % (MAX_STDIN_BLOB, MAX_PAYLOAD_CACHE))
    _validate_trust(cfg)
    try:
        cfg.ssh_settings()  # known_hosts and identity files are read now: a bad one stops the start
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except ImportError as exc:  # paramiko missing: fine for agent mode, an error if SSH mode was configured
        if cfg.ssh_identities or cfg.ssh_known_hosts or cfg.ssh_host_key_policy not in (None, "strict"):
            raise ConfigError("SSH options are set but SSH mode is unavailable: %s (install paramiko)" % exc) from None
    cfg.name = cfg.name or socket.gethostname()
    return cfg
