# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SSH connections of a zone executor (paramiko): host keys, credentials, and the pool.

A connection is opened once per (host, port, user, credential) and reused across tasks; a broken one is
replaced transparently, idle ones are closed after ``idle_timeout``, and at most ``pool_size`` are kept.
Host keys are always checked against ``known_hosts`` unless the policy is ``ignore``, which is logged loudly.
Failures carry the stage where they happened (tcp_connect, handshake, host_key, auth, session, sftp).
Secrets (passwords, keys, passphrases) are never logged or echoed. What runs over these connections is
hosts/ssh.py.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import io
import logging
import os
import socket
import threading
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple

import paramiko

from natsops_executor._wire.contract import E_HOST_KEY, E_TARGET_AUTH, E_TARGET_UNREACHABLE, WireError
from natsops_executor._wire.messages import Target

log = logging.getLogger("natsops_executor")

HOST_KEY_POLICIES = ("strict", "accept-new", "ignore")
DEFAULT_KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")

Credentials = Tuple[str, List[Tuple[str, paramiko.PKey]], Optional[str]]
PoolKey = Tuple[str, int, str, str]


def fail(code: str, stage: str, message: str, **details: Any) -> WireError:
    """A connection-level WireError whose details name the stage it failed at."""
    details["stage"] = stage
    return WireError(code, message, details)


def fingerprint(key: paramiko.PKey) -> str:
    """The key's OpenSSH SHA256 fingerprint."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode("ascii").rstrip("=")


def load_private_key(path: Optional[str] = None, text: Optional[str] = None,
                     passphrase: Optional[str] = None) -> paramiko.PKey:
    """A paramiko key from a file or PEM/OpenSSH text; raises ValueError without echoing the key."""
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            if path is not None:
                return cls.from_private_key_file(path, password=passphrase)
            return cls.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise ValueError("the private key is encrypted and no passphrase was given") from None
        except (paramiko.SSHException, ValueError):
            continue  # not this key type (or a wrong passphrase): try the next
        except OSError as exc:
            raise ValueError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    raise ValueError("not a supported private key (ed25519, ecdsa, rsa) or a wrong passphrase")


class HostKeys:
    """known_hosts, shared by every connection of this executor, with the configured policy."""

    def __init__(self, path: str, policy: str) -> None:
        if policy not in HOST_KEY_POLICIES:
            raise ValueError("ssh_host_key_policy must be one of %s" % ", ".join(HOST_KEY_POLICIES))
        self.path = path
        self.policy = policy
        self.lock = threading.Lock()
        self.keys = paramiko.HostKeys()
        if policy != "ignore" and path and os.path.exists(path):
            try:
                self.keys.load(path)
            except (OSError, paramiko.SSHException) as exc:
                raise ValueError("cannot read known_hosts %s: %s" % (path, exc)) from None

    def check(self, host: str, port: int, key: paramiko.PKey) -> None:
        """Accept the key the host offered, learn it (accept-new), or raise WireError(host_key_rejected)."""
        name = host if port == 22 else "[%s]:%d" % (host, port)
        fp = fingerprint(key)
        if self.policy == "ignore":
            log.warning("HOST KEY NOT VERIFIED for %s (%s %s): ssh_host_key_policy is 'ignore'", name, key.get_name(), fp)
            return
        with self.lock:
            known = self.keys.lookup(name)
            if known is not None and len(known):
                if key.get_name() in known and known[key.get_name()] == key:
                    return
                if key.get_name() in known:
                    raise fail(E_HOST_KEY, "host_key", "the host key of %s has CHANGED: it offered %s %s, which is not the "
                               "key recorded in %s; refusing to connect (if the host was really reinstalled, remove the "
                               "old entry: ssh-keygen -R '%s' -f %s)" % (name, key.get_name(), fp, self.path, name, self.path),
                               host=host, port=port, fingerprint=fp)
                raise fail(E_HOST_KEY, "host_key", "%s offered a %s host key (%s) but %s records it with %s only; "
                           "refusing to connect" % (name, key.get_name(), fp, self.path, ", ".join(known.keys())),
                           host=host, port=port, fingerprint=fp)
            if self.policy == "strict":
                message = ("the host key of %s is unknown (%s %s) and ssh_host_key_policy is 'strict': add it to %s on "
                           "the executor host (ssh-keyscan -p %d %s >> %s, after checking the fingerprint) or use the "
                           "policy 'accept-new'" % (name, key.get_name(), fp, self.path, port, host, self.path))
                raise fail(E_HOST_KEY, "host_key", message, host=host, port=port, fingerprint=fp)
            self.keys.add(name, key.get_name(), key)
            self._append(name, key)
        log.warning("learned the host key of %s on first contact: %s %s (ssh_host_key_policy accept-new)", name,
                    key.get_name(), fp)

    def _append(self, name: str, key: paramiko.PKey) -> None:
        if not self.path:
            return
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, ("%s %s %s\n" % (name, key.get_name(), key.get_base64())).encode("ascii"))
        finally:
            os.close(fd)


class SSHSettings:
    """What the executor was configured with for SSH mode (config.py builds it)."""

    def __init__(self, known_hosts: Optional[str] = None, host_key_policy: str = "strict",
                 identities: Optional[Dict[str, str]] = None, pool_size: int = 64, idle_timeout: float = 300.0,
                 connect_timeout: float = 10.0) -> None:
        self.host_keys = HostKeys(known_hosts or os.path.expanduser("~/.ssh/known_hosts"), host_key_policy)
        self.identities = {}
        for name, path in (identities or {}).items():
            try:
                self.identities[name] = load_private_key(path=path)
            except ValueError as exc:
                raise ValueError("ssh identity %r (%s): %s" % (name, path, exc)) from None
        self.pool_size = int(pool_size)
        self.idle_timeout = float(idle_timeout)
        self.connect_timeout = float(connect_timeout)

    def default_keys(self) -> List[Tuple[str, paramiko.PKey]]:
        """The identity 'default', else this account's ~/.ssh/id_* keys."""
        if "default" in self.identities:
            return [("identity 'default'", self.identities["default"])]
        found = []
        for name in DEFAULT_KEY_FILES:
            path = os.path.expanduser("~/.ssh/%s" % name)
            if os.path.exists(path):
                try:
                    found.append((path, load_private_key(path=path)))
                except ValueError as exc:
                    log.warning("skipping %s: %s", path, exc)
        return found


def _credential_key(target: Target) -> str:
    """Which credentials a target logs in with, as the pool keys its connections (no secret in it)."""
    if target.identity is not None:
        return "identity:%s" % target.identity
    if target.private_key is None and target.password is None:
        return "default"
    digest = hashlib.sha256()
    if target.private_key is not None:
        digest.update(b"key\0" + target.private_key.encode("utf-8"))
    if target.password is not None:
        digest.update(b"password\0" + target.password.encode("utf-8"))
    return "sent:" + digest.hexdigest()[:32]


def _credentials(settings: SSHSettings, target: Target) -> Credentials:
    """(pool key part, keys [(label, PKey)], password) for a validated target; secrets stay out of the key."""
    if target.identity is not None:
        key = settings.identities.get(target.identity)
        if key is None:
            raise fail(E_TARGET_AUTH, "auth", "this executor has no SSH identity named %r (it has: %s)" % (
                target.identity, ", ".join(sorted(settings.identities)) or "none"))
        return _credential_key(target), [("identity %r" % target.identity, key)], None
    keys = []
    if target.private_key is not None:
        try:
            keys.append(("the private key sent", load_private_key(text=target.private_key, passphrase=target.passphrase)))
        except ValueError as exc:
            raise fail(E_TARGET_AUTH, "auth", "the private key in the request is unusable: %s" % exc) from None
    if not keys and target.password is None:
        return "default", settings.default_keys(), None
    return _credential_key(target), keys, target.password


def _open_transport(settings: SSHSettings, target: Target, keys: List[Tuple[str, paramiko.PKey]],
                    password: Optional[str]) -> paramiko.Transport:
    """Blocking: TCP connect, SSH handshake, host key check, authentication. Returns an authenticated Transport."""
    host, port, user = target.host, target.port, target.user
    where = "%s@%s:%d" % (user, host, port)
    try:
        sock = socket.create_connection((host, port), timeout=settings.connect_timeout)
        # small SSH packets (channel requests, window adjusts) must not wait for delayed ACKs: Nagle off
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise fail(E_TARGET_UNREACHABLE, "tcp_connect", "cannot reach %s:%d: %s" % (host, port, exc.strerror or exc),
                   host=host, port=port) from exc
    transport = paramiko.Transport(sock)
    try:
        try:
            transport.start_client(timeout=settings.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise fail(E_TARGET_UNREACHABLE, "handshake", "SSH handshake with %s:%d failed: %s" % (host, port, exc),
                       host=host, port=port) from exc
        settings.host_keys.check(host, port, transport.get_remote_server_key())
        tried = []
        for label, key in keys:
            tried.append("publickey (%s)" % label)
            try:
                transport.auth_publickey(user, key)
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise fail(E_TARGET_UNREACHABLE, "auth", "connection to %s broke during authentication: %s" % (where, exc)) from exc
            if transport.is_authenticated():
                break
        if not transport.is_authenticated() and password is not None:
            tried.append("password")
            try:
                try:
                    transport.auth_password(user, password)
                except paramiko.BadAuthenticationType as exc:
                    if "keyboard-interactive" not in exc.allowed_types:
                        raise
                    transport.auth_interactive(user, lambda _title, _instr, prompts: [password] * len(prompts))
            except paramiko.AuthenticationException:
                pass
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise fail(E_TARGET_UNREACHABLE, "auth", "connection to %s broke during authentication: %s" % (where, exc)) from exc
        if not transport.is_authenticated():
            raise fail(E_TARGET_AUTH, "auth", "%s refused authentication (tried: %s)" % (
                where, ", ".join(tried) or "nothing: no identity, key or password given and none found on the executor"),
                host=host, port=port, user=user)
        transport.set_keepalive(30)
        return transport
    except BaseException:
        transport.close()
        raise


class _Entry:
    """A pooled connection: in use by ``busy`` jobs, last used at ``last_used``."""

    def __init__(self, transport: paramiko.Transport) -> None:
        self.transport = transport
        self.last_used = time.monotonic()
        self.busy = 0


class SSHPool:
    """Authenticated SSH connections kept per (host, port, user, credential) and reused across tasks."""

    def __init__(self, settings: SSHSettings, max_threads: int = 64) -> None:
        self.settings = settings
        self.threads = concurrent.futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="natsops-ssh")
        self.entries = {}
        self.locks = {}
        self.handshakes = 0
        self.reused = 0
        self._reaper = None

    def start(self) -> None:
        self._reaper = asyncio.ensure_future(self._reap())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for entry in list(self.entries.values()):
            entry.transport.close()
        self.entries.clear()
        self.threads.shutdown(wait=False)

    def stats(self) -> Dict[str, int]:
        return {"ssh_connections": len(self.entries), "ssh_handshakes": self.handshakes, "ssh_reused": self.reused}

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run blocking paramiko work in the pool's threads."""
        return await asyncio.get_running_loop().run_in_executor(self.threads, func, *args)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, max(1.0, self.settings.idle_timeout / 2)))
            now = time.monotonic()
            for key, entry in list(self.entries.items()):
                if entry.busy == 0 and (now - entry.last_used > self.settings.idle_timeout or not entry.transport.is_active()):
                    self._drop(key, entry)

    def _drop(self, key: PoolKey, entry: _Entry) -> None:
        if self.entries.get(key) is entry:
            del self.entries[key]
        entry.transport.close()

    def _make_room(self) -> None:
        """Keep at most pool_size connections: close the least recently used idle ones (busy ones never)."""
        idle = sorted((e.last_used, k) for k, e in self.entries.items() if e.busy == 0)
        while len(self.entries) >= self.settings.pool_size and idle:
            _last, key = idle.pop(0)
            self._drop(key, self.entries[key])

    @staticmethod
    def key_for(target: Target) -> PoolKey:
        """What the pool keys a target's connection by: host, port, user and which credentials (no secret; no key
        is read or parsed for it)."""
        return (target.host, target.port, target.user, _credential_key(target))

    async def acquire(self, target: Target, fresh: bool = False) -> Tuple[PoolKey, _Entry]:
        """An _Entry for the target, marked busy (release() it); connects when there is none or ``fresh``."""
        cred_key, keys, password = _credentials(self.settings, target)
        key = (target.host, target.port, target.user, cred_key)
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self.entries.get(key)
            if entry is not None and (fresh or not entry.transport.is_active()):
                self._drop(key, entry)
                entry = None
            if entry is None:
                self._make_room()
                transport = await self.run(_open_transport, self.settings, target, keys, password)
                self.handshakes += 1
                entry = self.entries[key] = _Entry(transport)
                log.info("ssh: connected to %s@%s:%d (%d pooled)", target.user, target.host, target.port,
                         len(self.entries))
            else:
                self.reused += 1
            entry.busy += 1
            entry.last_used = time.monotonic()
            return key, entry

    def release(self, key: PoolKey, entry: _Entry) -> None:
        entry.busy -= 1
        entry.last_used = time.monotonic()

    async def _open_channel(self, target: Target, open_channel: Callable[[paramiko.Transport], Any], stage: str,
                            what: str) -> Tuple[PoolKey, _Entry, Any]:
        """(key, entry, channel) from ``open_channel(transport)``, reconnecting once if a pooled connection
        turned out dead; ``release(key, entry)`` when done."""
        for attempt in (0, 1):
            key, entry = await self.acquire(target, fresh=attempt == 1)
            try:
                return key, entry, await self.run(open_channel, entry.transport)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self.release(key, entry)
                self._drop(key, entry)
                if attempt == 1:
                    raise fail(E_TARGET_UNREACHABLE, stage, "%s on %s: %s" % (what, target.host, exc),
                               host=target.host, port=target.port) from exc
        raise AssertionError("unreachable")

    async def session(self, target: Target) -> Tuple[PoolKey, _Entry, paramiko.Channel]:
        """(key, entry, channel): a new session channel."""
        return await self._open_channel(target, lambda transport: transport.open_session(self.settings.connect_timeout),
                                        "session", "cannot open an SSH session")

    async def sftp(self, target: Target) -> Tuple[PoolKey, _Entry, paramiko.SFTPClient]:
        """(key, entry, SFTPClient)."""
        return await self._open_channel(target, _sftp_client, "sftp", "cannot start SFTP")

    @contextlib.asynccontextmanager
    async def sftp_client(self, target: Target) -> AsyncIterator[paramiko.SFTPClient]:
        """An SFTPClient on the target for the ``async with`` block; closed and released afterwards."""
        key, entry, client = await self.sftp(target)
        try:
            yield client
        finally:
            client.close()
            self.release(key, entry)


def _sftp_client(transport: paramiko.Transport) -> paramiko.SFTPClient:
    client = paramiko.SFTPClient.from_transport(transport)
    if client is None:
        raise paramiko.SSHException("the server refused the sftp subsystem")
    return client
