# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SSH mode: run a task on a target host this executor reaches over SSH (paramiko).

A request with a ``target`` ({host, port, user, credentials}) runs there instead of on the
executor's own host: exec through an SSH session (stdin, separate stdout/stderr, exit status,
become prompts, timeouts that kill the remote process group), put and fetch through SFTP
(temp file + rename, nothing half-written). Connections are pooled per (host, port, user,
credential) and reused across tasks; a broken one is replaced transparently.

Host keys are always checked against ``known_hosts`` unless the policy is ``ignore``, which is
logged loudly. Failures carry the stage where they happened (tcp_connect, handshake, host_key,
auth, session, sftp). Secrets (passwords, keys, passphrases) are never logged or echoed.
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
import posixpath
import re
import shlex
import socket
import stat
import tempfile
import threading
import time

import paramiko

from natsops_executor import jobs
from natsops_executor._wire.contract import (
    E_BAD_PATH, E_BAD_REQUEST, E_CHECKSUM_MISMATCH, E_HOST_KEY, E_IO, E_NOT_FOUND, E_SIZE_MISMATCH,
    E_SPAWN, E_TARGET_AUTH, E_TARGET_UNREACHABLE, E_TIMEOUT, KIND_DATA, KIND_RESULT, STREAM_FILE, WireError,
)

log = logging.getLogger("natsops_executor")

HOST_KEY_POLICIES = ("strict", "accept-new", "ignore")
DEFAULT_KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# First bytes of stderr (stdout with a pty): the remote shell's pid and process group, so that a
# timeout can kill the whole group, like agent mode does. /proc is Linux; elsewhere only the pid.
_MARKER = b"\x1enatsops-pid:"
_WRAPPER = ('read -r natsops_p natsops_c natsops_s natsops_pp natsops_g natsops_r < /proc/$$/stat 2>/dev/null; '
            'printf "\\036natsops-pid:%s:%s\\n" "$$" "${natsops_g:-}" >&2; exec /bin/sh -c "$1"')


def _fail(code, stage, message, **details):
    details["stage"] = stage
    return WireError(code, message, details)


def fingerprint(key):
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode("ascii").rstrip("=")


def load_private_key(path=None, text=None, passphrase=None):
    """A paramiko key from a file or PEM/OpenSSH text; raises ValueError without echoing the key."""
    classes = [paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey]
    errors = []
    for cls in classes:
        try:
            if path is not None:
                return cls.from_private_key_file(path, password=passphrase)
            return cls.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise ValueError("the private key is encrypted and no passphrase was given")
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(type(exc).__name__)
        except OSError as exc:
            raise ValueError("cannot read %s: %s" % (path, exc.strerror or exc))
    raise ValueError("not a supported private key (ed25519, ecdsa, rsa) or a wrong passphrase")


class HostKeys:
    """known_hosts, shared by every connection of this executor, with the configured policy."""

    def __init__(self, path, policy):
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
                raise ValueError("cannot read known_hosts %s: %s" % (path, exc))

    def check(self, host, port, key):
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
                    raise _fail(E_HOST_KEY, "host_key", "the host key of %s has CHANGED: it offered %s %s, which is not the "
                                "key recorded in %s; refusing to connect (if the host was really reinstalled, remove the "
                                "old entry: ssh-keygen -R '%s' -f %s)" % (name, key.get_name(), fp, self.path, name, self.path),
                                host=host, port=port, fingerprint=fp)
                raise _fail(E_HOST_KEY, "host_key", "%s offered a %s host key (%s) but %s records it with %s only; "
                            "refusing to connect" % (name, key.get_name(), fp, self.path, ", ".join(known.keys())),
                            host=host, port=port, fingerprint=fp)
            if self.policy == "strict":
                message = ("the host key of %s is unknown (%s %s) and ssh_host_key_policy is 'strict': add it to %s on "
                           "the executor host (ssh-keyscan -p %d %s >> %s, after checking the fingerprint) or use the "
                           "policy 'accept-new'" % (name, key.get_name(), fp, self.path, port, host, self.path))
                raise _fail(E_HOST_KEY, "host_key", message, host=host, port=port, fingerprint=fp)
            self.keys.add(name, key.get_name(), key)
            self._append(name, key)
        log.info("learned the host key of %s: %s %s (ssh_host_key_policy accept-new)", name, key.get_name(), fp)

    def _append(self, name, key):
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

    def __init__(self, known_hosts=None, host_key_policy="strict", identities=None, pool_size=64,
                 idle_timeout=300.0, connect_timeout=10.0):
        self.host_keys = HostKeys(known_hosts or os.path.expanduser("~/.ssh/known_hosts"), host_key_policy)
        self.identities = {}
        for name, path in (identities or {}).items():
            try:
                self.identities[name] = load_private_key(path=path)
            except ValueError as exc:
                raise ValueError("ssh identity %r (%s): %s" % (name, path, exc))
        self.pool_size = int(pool_size)
        self.idle_timeout = float(idle_timeout)
        self.connect_timeout = float(connect_timeout)

    def default_keys(self):
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


def _credentials(settings, target):
    """(pool key part, keys [(label, PKey)], password) for a validated target; secrets stay out of the key."""
    if target["identity"] is not None:
        key = settings.identities.get(target["identity"])
        if key is None:
            raise _fail(E_TARGET_AUTH, "auth", "this executor has no SSH identity named %r (it has: %s)" % (
                target["identity"], ", ".join(sorted(settings.identities)) or "none"))
        return "identity:%s" % target["identity"], [("identity %r" % target["identity"], key)], None
    keys = []
    digest = hashlib.sha256()
    if target["private_key"] is not None:
        try:
            keys.append(("the private key sent", load_private_key(text=target["private_key"], passphrase=target["passphrase"])))
        except ValueError as exc:
            raise _fail(E_TARGET_AUTH, "auth", "the private key in the request is unusable: %s" % exc)
        digest.update(b"key\0" + target["private_key"].encode("utf-8"))
    if target["password"] is not None:
        digest.update(b"password\0" + target["password"].encode("utf-8"))
    if not keys and target["password"] is None:
        return "default", settings.default_keys(), None
    return "sent:" + digest.hexdigest()[:32], keys, target["password"]


def _open_transport(settings, target, keys, password):
    """Blocking: TCP connect, SSH handshake, host key check, authentication. Returns an authenticated Transport."""
    host, port, user = target["host"], target["port"], target["user"]
    where = "%s@%s:%d" % (user, host, port)
    try:
        sock = socket.create_connection((host, port), timeout=settings.connect_timeout)
        # small SSH packets (channel requests, window adjusts) must not wait for delayed ACKs: Nagle off
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise _fail(E_TARGET_UNREACHABLE, "tcp_connect", "cannot reach %s:%d: %s" % (host, port, exc.strerror or exc),
                    host=host, port=port)
    transport = paramiko.Transport(sock)
    try:
        try:
            transport.start_client(timeout=settings.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise _fail(E_TARGET_UNREACHABLE, "handshake", "SSH handshake with %s:%d failed: %s" % (host, port, exc),
                        host=host, port=port)
        settings.host_keys.check(host, port, transport.get_remote_server_key())
        tried = []
        for label, key in keys:
            tried.append("publickey (%s)" % label)
            try:
                transport.auth_publickey(user, key)
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise _fail(E_TARGET_UNREACHABLE, "auth", "connection to %s broke during authentication: %s" % (where, exc))
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
                raise _fail(E_TARGET_UNREACHABLE, "auth", "connection to %s broke during authentication: %s" % (where, exc))
        if not transport.is_authenticated():
            raise _fail(E_TARGET_AUTH, "auth", "%s refused authentication (tried: %s)" % (
                where, ", ".join(tried) or "nothing: no identity, key or password given and none found on the executor"),
                host=host, port=port, user=user)
        transport.set_keepalive(30)
        return transport
    except BaseException:
        transport.close()
        raise


class _Entry:
    def __init__(self, transport):
        self.transport = transport
        self.last_used = time.monotonic()
        self.busy = 0


class SSHPool:
    """Authenticated SSH connections kept per (host, port, user, credential) and reused across tasks."""

    def __init__(self, settings, max_threads=64):
        self.settings = settings
        self.threads = concurrent.futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="natsops-ssh")
        self.entries = {}
        self.locks = {}
        self.handshakes = 0
        self.reused = 0
        self._reaper = None

    def start(self):
        self._reaper = asyncio.ensure_future(self._reap())

    async def close(self):
        if self._reaper is not None:
            self._reaper.cancel()
        for entry in list(self.entries.values()):
            entry.transport.close()
        self.entries.clear()
        self.threads.shutdown(wait=False)

    def stats(self):
        return {"ssh_connections": len(self.entries), "ssh_handshakes": self.handshakes, "ssh_reused": self.reused}

    async def run(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self.threads, func, *args)

    async def _reap(self):
        while True:
            await asyncio.sleep(min(30.0, max(1.0, self.settings.idle_timeout / 2)))
            now = time.monotonic()
            for key, entry in list(self.entries.items()):
                if entry.busy == 0 and (now - entry.last_used > self.settings.idle_timeout or not entry.transport.is_active()):
                    self._drop(key, entry)

    def _drop(self, key, entry):
        if self.entries.get(key) is entry:
            del self.entries[key]
        entry.transport.close()

    def _make_room(self):
        """Keep at most pool_size connections: close the least recently used idle ones (busy ones never)."""
        idle = sorted((e.last_used, k) for k, e in self.entries.items() if e.busy == 0)
        while len(self.entries) >= self.settings.pool_size and idle:
            _last, key = idle.pop(0)
            self._drop(key, self.entries[key])

    async def acquire(self, target, fresh=False):
        """An _Entry for the target, marked busy (release() it); connects when there is none or ``fresh``."""
        cred_key, keys, password = _credentials(self.settings, target)
        key = (target["host"], target["port"], target["user"], cred_key)
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
                log.info("ssh: connected to %s@%s:%d (%d pooled)", target["user"], target["host"], target["port"],
                         len(self.entries))
            else:
                self.reused += 1
            entry.busy += 1
            entry.last_used = time.monotonic()
            return key, entry

    def release(self, key, entry):
        entry.busy -= 1
        entry.last_used = time.monotonic()

    async def _open_channel(self, target, open_channel, stage, what):
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
                    raise _fail(E_TARGET_UNREACHABLE, stage, "%s on %s: %s" % (what, target["host"], exc),
                                host=target["host"], port=target["port"])
        raise AssertionError("unreachable")

    async def session(self, target):
        """(key, entry, channel): a new session channel."""
        return await self._open_channel(target, lambda transport: transport.open_session(self.settings.connect_timeout),
                                        "session", "cannot open an SSH session")

    async def sftp(self, target):
        """(key, entry, SFTPClient)."""
        return await self._open_channel(target, _sftp_client, "sftp", "cannot start SFTP")

    @contextlib.asynccontextmanager
    async def sftp_client(self, target):
        """An SFTPClient on the target for the ``async with`` block; closed and released afterwards."""
        key, entry, client = await self.sftp(target)
        try:
            yield client
        finally:
            client.close()
            self.release(key, entry)


def _sftp_client(transport):
    client = paramiko.SFTPClient.from_transport(transport)
    if client is None:
        raise paramiko.SSHException("the server refused the sftp subsystem")
    return client


# ---------------------------------------------------------------- exec

def remote_command(req):
    """The command line for the remote login shell: cwd and env applied, wrapped to report its pid."""
    if req["argv"]:
        command = " ".join(shlex.quote(a) for a in req["argv"])
    elif req["shell"] in (None, "/bin/sh", "sh"):
        command = req["command"]
    else:
        command = "%s -c %s" % (shlex.quote(req["shell"]), shlex.quote(req["command"]))
    prefix = []
    if req["cwd"]:
        prefix.append("cd %s" % shlex.quote(req["cwd"]))
    for name, value in sorted((req["env"] or {}).items()):
        if not _ENV_NAME_RE.match(name):
            raise WireError(E_BAD_REQUEST, "exec: environment variable name %r is not valid in SSH mode" % name)
        prefix.append("export %s=%s" % (name, shlex.quote(value)))
    if prefix:
        command = " && ".join(prefix) + " && " + command
    return "/bin/sh -c %s natsops-exec %s" % (shlex.quote(_WRAPPER), shlex.quote(command))


class RemoteProcess:
    """A command in an SSH session, shaped like jobs.LocalProcess for jobs.supervise."""

    def __init__(self, pool, target, chan, use_pty):
        self.pool = pool
        self.target = target
        self.chan = chan
        self.loop = asyncio.get_running_loop()
        self.stdout = asyncio.StreamReader(limit=1 << 24, loop=self.loop)
        self.stderr = asyncio.StreamReader(limit=1 << 24, loop=self.loop)
        self.remote_pid = self.remote_pgid = None
        self.label = "remote command on %s" % target["host"]
        self.details = {"host": target["host"]}
        self._exit = self.loop.create_future()
        self._marker_on_stdout = use_pty
        for func in (self._read_stdout, self._read_stderr):
            threading.Thread(target=func, daemon=True, name="natsops-ssh-reader").start()

    def _deliver(self, reader, data):
        self.loop.call_soon_threadsafe(reader.feed_data, data)

    def _pump(self, recv, reader, has_marker):
        pending = b""
        try:
            while True:
                data = recv(65536)
                if not data:
                    break
                if has_marker:
                    pending += data
                    if b"\n" not in pending and len(pending) < 256:
                        continue
                    data = self._strip_marker(pending)
                    has_marker = False
                if data:
                    self._deliver(reader, data)
            if has_marker and pending:
                self._deliver(reader, self._strip_marker(pending))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.info("ssh: reading from %s ended: %s", self.target["host"], exc)
        finally:
            self.loop.call_soon_threadsafe(reader.feed_eof)

    def _strip_marker(self, data):
        if not data.startswith(_MARKER):
            return data
        line, _sep, rest = data.partition(b"\n")
        fields = line[len(_MARKER):].rstrip(b"\r").split(b":")
        try:
            self.remote_pid = int(fields[0])
            self.remote_pgid = int(fields[1]) if len(fields) > 1 and fields[1] else None
            self.label = "remote process group %s on %s" % (self.remote_pgid or self.remote_pid, self.target["host"])
            self.details = {"host": self.target["host"], "pid": self.remote_pid, "pgid": self.remote_pgid}
        except ValueError:
            pass
        return rest

    def _read_stdout(self):
        self._pump(self.chan.recv, self.stdout, self._marker_on_stdout)
        status = self.chan.recv_exit_status()
        self.loop.call_soon_threadsafe(self._set_exit, status)

    def _read_stderr(self):
        self._pump(self.chan.recv_stderr, self.stderr, not self._marker_on_stdout)

    def _set_exit(self, status):
        if not self._exit.done():
            self._exit.set_result(status)

    async def wait(self):
        status = await asyncio.shield(self._exit)
        return 255 if status < 0 else status  # no exit status (killed by a signal, channel lost): ssh's 255

    def write_password(self, data):
        self.chan.sendall(data)

    def _send_all(self, data):
        try:
            if data:
                self.chan.sendall(data)
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the command exited without reading all of stdin

    async def feed(self, data):
        await self.pool.run(self._send_all, data)

    async def _signal(self, name):
        if self.remote_pid is None:
            return
        if self.remote_pgid:
            command = "kill -%s -- -%d 2>/dev/null || kill -%s %d" % (name, self.remote_pgid, name, self.remote_pid)
        else:
            command = "kill -%s %d" % (name, self.remote_pid)
        try:
            key, entry, chan = await self.pool.session(self.target)
        except WireError as exc:
            log.warning("ssh: cannot signal %s: %s", self.label, exc.message)
            return
        try:
            await self.pool.run(_run_quiet, chan, command)
        finally:
            self.pool.release(key, entry)

    async def terminate(self):
        await self._signal("TERM")
        try:
            await asyncio.wait_for(asyncio.shield(self._exit), jobs.KILL_GRACE)
        except asyncio.TimeoutError:
            await self._signal("KILL")
        self.chan.close()

    async def cleanup(self):
        if not self._exit.done():
            await self._signal("KILL")
        self.chan.close()


def _run_quiet(chan, command):
    try:
        chan.exec_command(command)
        chan.recv_exit_status()
    finally:
        chan.close()


async def run_exec(pool, req, stdin_data, sender, chunk):
    """jobs.run_exec, on req['target'] over SSH."""
    target = req["target"]
    command = remote_command(req)
    started = time.monotonic()
    key, entry, chan = await pool.session(target)
    try:
        try:
            if req["pty"]:
                await pool.run(chan.get_pty)
            await pool.run(chan.exec_command, command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            chan.close()
            raise WireError(E_SPAWN, "cannot start the command on %s: %s" % (target["host"], exc), {"stage": "session"})
        process = RemoteProcess(pool, target, chan, req["pty"])
        try:
            return await jobs.supervise(req, process, stdin_data, sender, chunk, started)
        finally:
            await process.cleanup()
    finally:
        pool.release(key, entry)


# ---------------------------------------------------------------- put / fetch over SFTP

def _sftp_error(exc, what):
    if isinstance(exc, IOError) and getattr(exc, "errno", None):
        return jobs.os_error(exc, what)
    return WireError(E_IO, "%s: %s" % (what, exc), {"stage": "sftp"})


def check_put_target(sftp, path):
    parent = posixpath.dirname(path) or "/"
    try:
        if not stat.S_ISDIR(sftp.stat(parent).st_mode):
            raise WireError(E_NOT_FOUND, "destination directory %s does not exist" % parent)
    except IOError as exc:
        if getattr(exc, "errno", None) == 2:
            raise WireError(E_NOT_FOUND, "destination directory %s does not exist" % parent)
        raise _sftp_error(exc, "cannot check %s" % parent)
    try:
        if stat.S_ISDIR(sftp.stat(path).st_mode):
            raise WireError(E_BAD_PATH, "destination %s is a directory" % path)
    except IOError as exc:
        if getattr(exc, "errno", None) != 2:
            raise _sftp_error(exc, "cannot check %s" % path)


def upload(sftp, spool, path, mode, deadline=None):
    """Write a temp file beside ``path``, then rename it over ``path``; the temp file never survives a failure."""
    name = ".%s.natsops-%s.tmp" % (posixpath.basename(path)[:64], os.urandom(4).hex())
    temp = posixpath.join(posixpath.dirname(path) or "/", name)
    try:
        with sftp.open(temp, "wx") as handle:
            handle.chmod(0o600 if mode is None else mode)
            handle.set_pipelined(True)
            spool.seek(0)
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    raise WireError(E_TIMEOUT, "copy to %s timed out; nothing was written" % path)
                block = spool.read(1 << 20)
                if not block:
                    break
                handle.write(block)
        sftp.posix_rename(temp, path)
        temp = None
    except IOError as exc:
        raise _sftp_error(exc, "cannot write %s" % path)
    finally:
        if temp is not None:
            try:
                sftp.remove(temp)
            except IOError:
                pass


async def check_put(pool, req):
    """Before accepting a put: the destination directory exists on the target (and the target is reachable)."""
    async with pool.sftp_client(req["target"]) as sftp:
        await pool.run(check_put_target, sftp, req["path"])


async def run_put(pool, req, inline, receiver, sender):
    """Receive and verify the whole file on the executor first, then place it on the target atomically."""
    size = req["size"]
    spool = tempfile.TemporaryFile(prefix="natsops-put-")
    digest = hashlib.sha256()
    received = [0]

    def write(data):
        digest.update(data)
        received[0] += len(data)
        spool.write(data)

    try:
        if receiver is None:
            write(inline)
        else:
            await jobs.receive_upload(receiver, size, req["keepalive"], write)
        if received[0] != size:
            raise WireError(E_SIZE_MISMATCH, "received %d bytes, %d were announced" % (received[0], size))
        if digest.hexdigest() != req["sha256"]:
            raise WireError(E_CHECKSUM_MISMATCH, "sha256 of the received bytes is %s, the caller announced %s; "
                                                 "nothing was written" % (digest.hexdigest(), req["sha256"]))
        async with pool.sftp_client(req["target"]) as sftp:
            await pool.run(upload, sftp, spool, req["path"], req["mode"])
        summary = {"size": size, "sha256": req["sha256"]}
        await sender.send(KIND_RESULT, summary)
        return summary
    finally:
        spool.close()


def _remote_isdir(sftp, path):
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode)
    except IOError as exc:
        if getattr(exc, "errno", None) == 2:
            return False
        raise


def _copy_tree(sftp, source, dest, deadline):
    """Blocking: copy a file or directory of this host to ``dest`` on the target with scp -r's rules
    (an existing directory at ``dest`` receives ``basename(source)``); every file lands atomically.
    Returns (files, bytes, the path it landed at)."""
    if _remote_isdir(sftp, dest):
        dest = posixpath.join(dest, os.path.basename(source.rstrip("/")) or "root")
    files = size = 0
    if not os.path.isdir(source):
        with open(source, "rb") as handle:
            upload(sftp, handle, dest, stat.S_IMODE(os.fstat(handle.fileno()).st_mode), deadline)
            return 1, os.fstat(handle.fileno()).st_size, dest
    for root, _dirs, names in os.walk(source):
        rel = os.path.relpath(root, source)
        rdir = dest if rel == "." else posixpath.join(dest, *rel.split(os.sep))
        if not _remote_isdir(sftp, rdir):
            sftp.mkdir(rdir, stat.S_IMODE(os.stat(root).st_mode))
        for name in sorted(names):
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                continue  # sockets, fifos, dangling links: scp skips them too
            with open(path, "rb") as handle:
                st = os.fstat(handle.fileno())
                upload(sftp, handle, posixpath.join(rdir, name), stat.S_IMODE(st.st_mode), deadline)
            files += 1
            size += st.st_size
    return files, size, dest


async def copy_path(pool, target, source, dest, deadline):
    """Copy ``source`` (a file or directory on the executor host) to ``dest`` on the target over SFTP,
    like ``scp -r`` but with host keys checked and every file written to a temp file and renamed."""
    async with pool.sftp_client(target) as sftp:
        try:
            return await pool.run(_copy_tree, sftp, source, dest, deadline)
        except (IOError, OSError) as exc:
            raise _sftp_error(exc, "cannot copy %s to %s:%s" % (source, target["host"], dest))


def _open_remote(sftp, path):
    try:
        st = sftp.stat(path)
    except IOError as exc:
        raise _sftp_error(exc, "cannot open %s" % path)
    if not stat.S_ISREG(st.st_mode):
        raise WireError(E_BAD_PATH, "%s is not a regular file" % path)
    try:
        handle = sftp.open(path, "rb")
    except IOError as exc:
        raise _sftp_error(exc, "cannot open %s" % path)
    handle.prefetch(st.st_size)
    return handle, st.st_size, stat.S_IMODE(st.st_mode)


class RemoteSource:
    """An open remote file for fetch (open() before accepting, send() after)."""

    def __init__(self, pool, target):
        self.pool = pool
        self.target = target
        self.key = self.entry = self.sftp = self.handle = None

    async def open(self, path):
        self.key, self.entry, self.sftp = await self.pool.sftp(self.target)
        try:
            self.handle, size, mode = await self.pool.run(_open_remote, self.sftp, path)
        except BaseException:
            await self.close()
            raise
        return size, mode

    async def send(self, sender, chunk):
        digest = hashlib.sha256()
        size = 0
        try:
            while True:
                try:
                    data = await self.pool.run(self.handle.read, chunk)
                except IOError as exc:
                    raise _sftp_error(exc, "read failed")
                if not data:
                    break
                digest.update(data)
                size += len(data)
                await sender.send(KIND_DATA, attachment=data, stream=STREAM_FILE)
        finally:
            await self.close()
        summary = {"size": size, "sha256": digest.hexdigest()}
        await sender.send(KIND_RESULT, summary)
        return summary

    async def close(self):
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.sftp is not None:
            self.sftp.close()
            self.sftp = None
        if self.entry is not None:
            self.pool.release(self.key, self.entry)
            self.entry = None
