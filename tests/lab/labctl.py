# Copyright: natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Multi-host test lab: real systemd + sshd hosts booted with systemd-nspawn.

Usage (root only)::

    python3 tests/lab/labctl.py up [--hosts N] [--zone-hosts M] [--timeout S]
    python3 tests/lab/labctl.py status
    python3 tests/lab/labctl.py down

Python API: ``up(hosts, zone_hosts) -> dict``, ``down()``, ``status() -> dict``,
``run_ssh(name, command, user=...)``.

Layout
  * base root (Debian 12, built once by debootstrap, keyed by a hash of BASE_RECIPE):
    /var/cache/natsops-fleet/lab/base-<hash>/
  * state (lab SSH key, state.json, per-host overlay upper dirs and console logs):
    /var/lib/natsops-fleet/lab/
  * generated for users and tests, under the repository root: .lab/inventory.yml,
    .lab/hosts.json, .lab/ssh_config, .lab/known_hosts

Networks (10.213.0.0/16 only; an "unreachable" route for that /16 keeps lab traffic
from ever leaving the machine):
  * management: bridge nfl-mgmt0, 10.213.0.0/24, controller at 10.213.0.1,
    host lab-mgmt-i at 10.213.0.(10+i)
  * zone: bridge nfl-zone0, 10.213.1.0/24, no controller address (unreachable from here),
    host lab-zone-i at 10.213.1.(10+i); with zone hosts, lab-mgmt-1 is the executor host
    and also joins the zone net at 10.213.1.10 (it holds the lab key to reach the zone hosts).

Users on every host: root (key), alice (key, passwordless sudo),
bob (key or password "bob-secret", sudo asks for his password).
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger("natsops.lab")

REPO_ROOT = Path(__file__).resolve().parents[2]
LAB_OUT = REPO_ROOT / ".lab"
CACHE_DIR = Path("/var/cache/natsops-fleet/lab")
STATE_DIR = Path("/var/lib/natsops-fleet/lab")
STATE_FILE = STATE_DIR / "state.json"
HOSTS_DIR = STATE_DIR / "hosts"
KEY_FILE = STATE_DIR / "id_ed25519"

INVENTORY = LAB_OUT / "inventory.yml"
HOSTS_JSON = LAB_OUT / "hosts.json"
SSH_CONFIG = LAB_OUT / "ssh_config"
KNOWN_HOSTS = LAB_OUT / "known_hosts"
GENERATED = (INVENTORY, HOSTS_JSON, SSH_CONFIG, KNOWN_HOSTS)

LAB_SUBNET = "10.213.0.0/16"
NETWORKS = {
    "mgmt": {"bridge": "nfl-mgmt0", "prefix": "10.213.0", "subnet": "10.213.0.0/24", "controller_address": "10.213.0.1"},
    "zone": {"bridge": "nfl-zone0", "prefix": "10.213.1", "subnet": "10.213.1.0/24", "controller_address": None},
}
EXECUTOR_ZONE_ADDRESS = "10.213.1.10"
CGROUP_NAME = "natsops-lab"
# Interfaces the lab creates: its bridges, and the host sides of the hosts' veths
# (systemd-nspawn names them vb-<machine>; the lab names the extra ones vx-<machine>).
LAB_VETH_RE = re.compile(r"^v[bx]-lab-(mgmt|zone)-\d+$")
MAX_HOSTS = 100

BECOME_USERS = {"alice": {"password": None}, "bob": {"password": "bob-secret"}}

SSHD_CONFIG = """\
# natsops-fleet test lab
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication yes
UseDNS no
MaxStartups 64:30:256
MaxSessions 64
"""
SUDOERS = """\
# natsops-fleet test lab: alice needs no password, bob must give his own.
alice ALL=(ALL:ALL) NOPASSWD: ALL
bob ALL=(ALL:ALL) ALL
"""
# Everything that defines the base root. Any change here gives a new hash, hence a rebuild.
BASE_RECIPE = {
    "version": 1,
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["systemd", "systemd-sysv", "openssh-server", "python3", "sudo", "iproute2", "procps"],
    # installed with apt after debootstrap (its own dependency ordering fails on python3 packages):
    # the lab executors run paramiko from the portable site (tools/devenv.py); this is a fallback
    "packages": ["python3-paramiko"],
    "files": {
        "etc/ssh/sshd_config.d/10-natsops-lab.conf": [SSHD_CONFIG, 0o644],
        "etc/sudoers.d/natsops-lab": [SUDOERS, 0o440],
        "etc/resolv.conf": ["# natsops-fleet test lab: no DNS\n", 0o644],
    },
    "remove": ["etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_rsa_key.pub", "etc/ssh/ssh_host_ecdsa_key",
               "etc/ssh/ssh_host_ecdsa_key.pub", "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub"],
    "chroot": [
        ["useradd", "--create-home", "--user-group", "--shell", "/bin/bash", "alice"],
        ["useradd", "--create-home", "--user-group", "--shell", "/bin/bash", "bob"],
        ["install", "-d", "-m", "0700", "-o", "alice", "-g", "alice", "/home/alice/.ssh"],
        ["install", "-d", "-m", "0700", "-o", "bob", "-g", "bob", "/home/bob/.ssh"],
        ["install", "-d", "-m", "0700", "/root/.ssh"],
        ["systemctl", "enable", "systemd-networkd.service", "ssh.service"],
        ["systemctl", "disable", "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
         "e2scrub_all.timer", "fstrim.timer", "e2scrub_reap.service"],
        ["systemctl", "mask", "console-getty.service", "getty@tty1.service"],
    ],
    "passwords": {"bob": "bob-secret"},
}

SSH_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
LOCK_TIMEOUT = 600.0

# systemd-nspawn processes started by this Python process, so that they can be reaped.
_CHILDREN = {}


class LabError(Exception):
    """A lab operation failed; the message says what and how to fix it."""


# ---------------------------------------------------------------- helpers

def _run(argv, check=True, **kwargs):
    """Run a command (argument list), capture its output, raise LabError on failure."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.run(argv, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise LabError(f"command failed (rc={proc.returncode}): {shlex.join(argv)}\n{(proc.stderr or '').strip()}")
    return proc


def _write(path, content, mode=0o644):
    """Write a file atomically (temp file + rename) with the given mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(content, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _tail(path, lines=25):
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _link_exists(name):
    return Path("/sys/class/net", name).exists()


def _disable_ipv6(ifname):
    """No IPv6 on lab links: the controller must not reach the zone net over link-local addresses."""
    with contextlib.suppress(OSError):
        Path("/proc/sys/net/ipv6/conf", ifname, "disable_ipv6").write_text("1\n", encoding="ascii")


def _mounts_under(path):
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return sorted((p for p in points if p.startswith(prefix) or p == prefix[:-1]), key=len, reverse=True)


def _remove_tree(path):
    """Remove a directory tree after detaching anything still mounted below it."""
    path = Path(path)
    for point in _mounts_under(path):
        _run(["umount", "--lazy", point], check=False)
    if _mounts_under(path):
        raise LabError(f"cannot remove {path}: still mounted below it: {', '.join(_mounts_under(path))}")
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked():
    """Serialise up/down/build across processes."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "lock", "w", encoding="ascii") as handle:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() > deadline:
                    raise LabError(f"another labctl holds {STATE_DIR / 'lock'}") from exc
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_prerequisites():
    """Return None when the lab can run here, else the reason why not."""
    if os.geteuid() != 0:
        return "the lab needs root (systemd-nspawn, bridges)"
    missing = [tool for tool in ("systemd-nspawn", "debootstrap", "ip", "ssh", "ssh-keygen", "chroot") if not shutil.which(tool)]
    if missing:
        return f"missing tools: {', '.join(missing)} (apt-get install -y debootstrap systemd-container openssh-client iproute2)"
    return None


def _require_prerequisites():
    reason = check_prerequisites()
    if reason:
        raise LabError(reason)


# ---------------------------------------------------------------- processes

def _proc_stat(pid):
    """(state, starttime) of a process, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _is_lab_nspawn(pid, starttime, name):
    """True only when PID is still the systemd-nspawn the lab started for host NAME."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X") or stat[1] != starttime:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == b"systemd-nspawn" and name.encode() in argv


def _reap(pid):
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _host_alive(host):
    _reap(host["pid"])
    return _is_lab_nspawn(host["pid"], host["starttime"], host["name"])


def _cgroup_roots():
    """Cgroup hierarchies to place each host in (so hosts never share cgroups)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base]
    return [base / sub for sub in ("unified", "systemd") if (base / sub / "cgroup.procs").exists()]


def _cgroup_pids(path):
    pids = []
    for procs in Path(path).rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.extend(int(line) for line in procs.read_text(encoding="ascii").split())
    return pids


def _kill_cgroup(path):
    """Kill whatever still runs in a lab host cgroup (e.g. a container orphaned by a crashed nspawn), then remove it."""
    path = Path(path)
    if not path.is_dir():
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while _cgroup_pids(path) and time.monotonic() < deadline:
        if (path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (path / "cgroup.kill").write_text("1\n", encoding="ascii")
        else:
            for pid in _cgroup_pids(path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        for pid in list(_CHILDREN):
            _reap(pid)
    for sub, _dirs, _files in sorted(os.walk(path), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(sub)
    if path.exists():
        raise LabError(f"cannot remove cgroup {path}: processes left: {_cgroup_pids(path)}")


# ---------------------------------------------------------------- base root

def recipe_hash():
    return hashlib.sha256(json.dumps(BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:16]


def base_path():
    return CACHE_DIR / f"base-{recipe_hash()}"


def ensure_base():
    """Return the cached base root, building it first when missing or when the recipe changed."""
    _require_prerequisites()
    with _locked():
        return _ensure_base()


def _ensure_base():
    base = base_path()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    for stale in CACHE_DIR.glob(".tmp-base-*"):  # left by a crashed build
        log.info("removing the unfinished base root %s", stale)
        _remove_tree(stale)
    if base.is_dir():
        return base
    tmp = CACHE_DIR / f".tmp-{base.name}"
    build_log = CACHE_DIR / "build.log"
    log.info("building the lab base root with debootstrap (about a minute, once): %s", base)
    started = time.monotonic()
    argv = ["debootstrap", f"--variant={BASE_RECIPE['variant']}", f"--include={','.join(BASE_RECIPE['include'])}",
            BASE_RECIPE["suite"], str(tmp)]
    with open(build_log, "w", encoding="utf-8") as out:
        rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False).returncode
    if rc != 0:
        _remove_tree(tmp)
        raise LabError(f"debootstrap failed (rc={rc}); see {build_log}:\n{_tail(build_log)}")
    try:
        if BASE_RECIPE["packages"]:
            _run(["chroot", str(tmp), "apt-get", "install", "-y", "-q", "--no-install-recommends"] + BASE_RECIPE["packages"],
                 env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            _run(["chroot", str(tmp), "apt-get", "clean"])
        for rel in BASE_RECIPE["remove"]:
            (tmp / rel).unlink(missing_ok=True)
        for rel, (content, mode) in BASE_RECIPE["files"].items():
            (tmp / rel).unlink(missing_ok=True)  # may be a symlink pointing out of the root
            _write(tmp / rel, content, mode)
        for argv in BASE_RECIPE["chroot"]:
            _run(["chroot", str(tmp)] + argv)
        for user, password in BASE_RECIPE["passwords"].items():
            _run(["chroot", str(tmp), "chpasswd"], input=f"{user}:{password}\n")
    except (LabError, OSError) as exc:
        _remove_tree(tmp)
        raise LabError(f"configuring the base root failed: {exc}") from exc
    os.rename(tmp, base)
    for old in CACHE_DIR.glob("base-*"):
        if old != base:
            log.info("removing outdated base root %s", old)
            _remove_tree(old)
    log.info("base root ready in %.0f s", time.monotonic() - started)
    return base


def ensure_key():
    """The lab's SSH key pair, generated once."""
    if not KEY_FILE.exists():
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        KEY_FILE.with_suffix(".pub").unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "natsops-fleet-lab", "-f", str(KEY_FILE)])
    return KEY_FILE


# ---------------------------------------------------------------- hosts

def plan(hosts, zone_hosts):
    """The hosts of a lab with HOSTS management hosts and ZONE_HOSTS zone-only hosts."""
    if not 1 <= hosts <= MAX_HOSTS or not 0 <= zone_hosts <= MAX_HOSTS:
        raise LabError(f"--hosts must be 1..{MAX_HOSTS} and --zone-hosts 0..{MAX_HOSTS} (got {hosts}, {zone_hosts})")
    result = []
    for i in range(1, hosts + 1):
        entry = {"name": f"lab-mgmt-{i}", "role": "target", "addresses": {"mgmt": f"{NETWORKS['mgmt']['prefix']}.{10 + i}"}}
        if i == 1 and zone_hosts:
            entry["role"] = "executor"
            entry["addresses"]["zone"] = EXECUTOR_ZONE_ADDRESS
        result.append(entry)
    for i in range(1, zone_hosts + 1):
        result.append({"name": f"lab-zone-{i}", "role": "target", "addresses": {"zone": f"{NETWORKS['zone']['prefix']}.{10 + i}"}})
    for entry in result:
        entry["networks"] = list(entry["addresses"])
        entry["ansible_host"] = entry["addresses"].get("mgmt") or entry["addresses"]["zone"]
    return result


def _upper_file(base, upper, rel, content, mode=0o644, owner=(0, 0)):
    """Write a file into a host's overlay upper dir; parent dirs copy owner and mode from the base."""
    target = upper / rel
    parts = Path(rel).parts[:-1]
    for depth in range(1, len(parts) + 1):
        sub = Path(*parts[:depth])
        if not (upper / sub).is_dir():
            (upper / sub).mkdir()
            ref = (base / sub).stat()
            os.chown(upper / sub, ref.st_uid, ref.st_gid)
            os.chmod(upper / sub, ref.st_mode & 0o7777)
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    os.chown(target, *owner)
    os.chmod(target, mode)


def _base_ids(base, user):
    for line in (base / "etc/passwd").read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise LabError(f"user {user} missing in base root {base}; delete it to rebuild")


def _prepare_host(base, host, all_hosts):
    """Create the host's overlay upper dir: hostname, addresses, keys, machine id."""
    hdir = HOSTS_DIR / host["name"]
    upper = hdir / "upper"
    upper.mkdir(parents=True)
    os.chmod(upper, 0o755)
    name = host["name"]
    _upper_file(base, upper, "etc/hostname", f"{name}\n")
    _upper_file(base, upper, "etc/machine-id", f"{uuid.uuid4().hex}\n", 0o444)
    hosts_lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback", f"{NETWORKS['mgmt']['controller_address']} lab-controller"]
    hosts_lines += [f"{other['ansible_host']} {other['name']}" for other in all_hosts]
    _upper_file(base, upper, "etc/hosts", "\n".join(hosts_lines) + "\n")
    for index, (net, ifname) in enumerate((("mgmt", "host0"), ("zone", "eth1"))):
        if net in host["addresses"]:
            if net == "zone" and "mgmt" not in host["addresses"]:
                ifname = "host0"
            _upper_file(base, upper, f"etc/systemd/network/1{index}-natsops-lab.network",
                        f"[Match]\nName={ifname}\n\n[Network]\nAddress={host['addresses'][net]}/24\n"
                        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    hostkey = hdir / "ssh_host_ed25519_key"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", str(hostkey)])
    _upper_file(base, upper, "etc/ssh/ssh_host_ed25519_key", hostkey.read_bytes(), 0o600)
    host["host_key"] = hostkey.with_suffix(".pub").read_text(encoding="ascii").strip()
    _upper_file(base, upper, "etc/ssh/ssh_host_ed25519_key.pub", host["host_key"] + "\n")
    pub = KEY_FILE.with_suffix(".pub").read_text(encoding="ascii")
    _upper_file(base, upper, "root/.ssh/authorized_keys", pub, 0o600)
    for user in BECOME_USERS:
        _upper_file(base, upper, f"home/{user}/.ssh/authorized_keys", pub, 0o600, _base_ids(base, user))
    if host["role"] == "executor":
        # The executor host reaches the zone hosts over SSH with the lab key.
        _upper_file(base, upper, "root/.ssh/id_ed25519", KEY_FILE.read_bytes(), 0o600)
        _upper_file(base, upper, "root/.ssh/id_ed25519.pub", pub)


# Moves the shell into the host's own cgroups, then becomes systemd-nspawn. Fixed text; all values are arguments.
_CGROUP_EXEC = 'set -e; n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs"; shift; n=$((n - 1)); done; exec "$@"'


def _spawn(base, host):
    name = host["name"]
    hdir = HOSTS_DIR / name
    argv = ["systemd-nspawn", "-D", str(base), f"--overlay={base}:{hdir / 'upper'}:/", "-b", "--register=no", "--keep-unit",
            "-M", name, "--link-journal=no", "--resolv-conf=off", "--timezone=off", "--console=read-only"]
    if "mgmt" in host["addresses"]:
        argv.append(f"--network-bridge={NETWORKS['mgmt']['bridge']}")
        host["veths"] = [f"vb-{name}"]
        if "zone" in host["addresses"]:
            argv.append(f"--network-veth-extra=vx-{name}:eth1")
            host["veths"].append(f"vx-{name}")
    else:
        argv.append(f"--network-bridge={NETWORKS['zone']['bridge']}")
        host["veths"] = [f"vb-{name}"]
    host["cgroups"] = []
    for root in _cgroup_roots():
        path = root / CGROUP_NAME / name
        path.mkdir(parents=True, exist_ok=True)
        host["cgroups"].append(str(path))
    host["console_log"] = str(hdir / "console.log")
    with open(host["console_log"], "wb") as out:
        child = subprocess.Popen(  # pylint: disable=consider-using-with  # runs on after up() returns; down() stops it
            ["sh", "-c", _CGROUP_EXEC, "sh", str(len(host["cgroups"]))] + host["cgroups"] + argv,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[child.pid] = child
    host["pid"] = child.pid
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stat = _proc_stat(child.pid)
        if stat is None:
            break
        host["starttime"] = stat[1]
        if _is_lab_nspawn(child.pid, stat[1], name):
            return
        if child.poll() is not None:
            break
        time.sleep(0.02)
    raise LabError(f"systemd-nspawn for {name} did not start; console log {host['console_log']}:\n{_tail(host['console_log'])}")


def _attach_extra_veth(host):
    """Put the executor host's second veth on the zone bridge once systemd-nspawn created it."""
    veth = f"vx-{host['name']}"
    deadline = time.monotonic() + 15
    while not _link_exists(veth):
        if time.monotonic() > deadline or not _host_alive(host):
            raise LabError(f"{veth} did not appear for {host['name']}; console log:\n{_tail(host['console_log'])}")
        time.sleep(0.05)
    _disable_ipv6(veth)
    _run(["ip", "link", "set", veth, "master", NETWORKS["zone"]["bridge"]])
    _run(["ip", "link", "set", veth, "up"])


def _ssh_argv(name, user=None, options=()):
    argv = ["ssh", "-F", str(SSH_CONFIG), "-o", "BatchMode=yes"]
    for option in options:
        argv += ["-o", option]
    if user:
        argv += ["-l", user]
    return argv + [name]


def run_ssh(name, command, user=None, input_text=None, timeout=60, options=()):
    """Run COMMAND (a string for the remote shell, or an argument list) on lab host NAME over SSH.

    Zone-only hosts are reached through the executor host (ProxyJump in .lab/ssh_config).
    Returns subprocess.CompletedProcess with text stdout/stderr.
    """
    if not isinstance(command, str):
        command = shlex.join(command)
    return subprocess.run(_ssh_argv(name, user, options) + [command], input=input_text, text=True, capture_output=True,
                          timeout=timeout, check=False)


def _wait_ssh(hosts, timeout):
    """Wait until every host runs a command over SSH; raise LabError naming the hosts that did not."""
    deadline = time.monotonic() + timeout
    ready = {}
    errors = {}

    def probe(host):
        while time.monotonic() < deadline:
            if not _host_alive(host):
                errors[host["name"]] = "systemd-nspawn exited"
                return
            try:
                proc = run_ssh(host["name"], "true", options=("ConnectTimeout=2",), timeout=10)
            except subprocess.TimeoutExpired:
                continue
            if proc.returncode == 0:
                ready[host["name"]] = time.monotonic()
                return
            errors[host["name"]] = proc.stderr.strip()
            time.sleep(0.2)

    # Management hosts first: zone hosts are reached through the executor host.
    for group in ([h for h in hosts if "mgmt" in h["addresses"]], [h for h in hosts if "mgmt" not in h["addresses"]]):
        threads = [threading.Thread(target=probe, args=(host,), daemon=True) for host in group]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    missing = [h for h in hosts if h["name"] not in ready]
    if missing:
        details = "\n".join(f"  {h['name']}: {errors.get(h['name'], 'no answer')}\n    console: {_tail(h['console_log'], 5)}" for h in missing)
        raise LabError(f"{len(missing)} lab host(s) did not answer ssh within {timeout:.0f} s:\n{details}")


# ---------------------------------------------------------------- state and network

def _load_state():
    try:
        return json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable lab state %s: %s", STATE_FILE, exc)
        return {}


def _save_state(state):
    _write(STATE_FILE, json.dumps(state, indent=2) + "\n", 0o600)


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_HOST = 32  # systemd, journald, logind and path units each hold inotify instances; all hosts share root's limit


def _ensure_inotify(host_count):
    """Every host's systemd uses inotify instances counted against root's one limit (128 by default): about
    twenty hosts exhaust it and units such as systemd-ask-password-wall.path fail. Raise it when too low."""
    try:
        current = int(INOTIFY_INSTANCES.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return
    needed = 128 + INOTIFY_PER_HOST * host_count
    if current < needed:
        log.info("raising fs.inotify.max_user_instances from %d to %d for %d hosts", current, needed, host_count)
        INOTIFY_INSTANCES.write_text("%d\n" % needed, encoding="ascii")


def _setup_network(state):
    """Create the lab bridges and the guard route; refuse if 10.213.0.0/16 is used by something else."""
    addrs = _run(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines()
    foreign = [line for line in addrs if " 10.213." in line and line.split()[1] not in {n["bridge"] for n in NETWORKS.values()}]
    if foreign:
        raise LabError("10.213.0.0/16 is already used on this machine, the lab will not share it:\n" + "\n".join(foreign))
    for net in NETWORKS.values():
        bridge = net["bridge"]
        state["bridges"].append(bridge)
        _save_state(state)
        _run(["ip", "link", "add", bridge, "type", "bridge"])
        _disable_ipv6(bridge)
        if net["controller_address"]:
            _run(["ip", "addr", "add", f"{net['controller_address']}/24", "dev", bridge])
        _run(["ip", "link", "set", bridge, "up"])
    routes = _run(["ip", "route", "show", "exact", LAB_SUBNET]).stdout.strip()
    if routes and not routes.startswith("unreachable"):
        raise LabError(f"{LAB_SUBNET} is already routed on this machine ({routes}); the lab needs it for itself")
    if not routes:
        state["route"] = LAB_SUBNET
        _save_state(state)
        # Addresses of the lab that are not on a lab bridge (the zone net) fail at once instead of leaving the machine.
        _run(["ip", "route", "add", "unreachable", LAB_SUBNET])


def _teardown():
    """Stop and remove everything the lab created, whatever state a crash left behind."""
    state = _load_state()
    hosts = state.get("hosts", [])
    running = [h for h in hosts if "pid" in h and _host_alive(h)]
    for host in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(host["pid"], signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_host_alive(h) for h in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for host in running:
        if _host_alive(host):
            log.warning("%s did not stop within %.0f s after SIGTERM, killing it", host["name"], STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(host["pid"], signal.SIGKILL)
    # Containers whose systemd-nspawn crashed keep running in the host's cgroup: kill them there.
    for root in _cgroup_roots():
        if (root / CGROUP_NAME).is_dir():
            for path in sorted((root / CGROUP_NAME).iterdir()):
                if path.is_dir():
                    _kill_cgroup(path)
            with contextlib.suppress(OSError):
                os.rmdir(root / CGROUP_NAME)
    links = set(os.listdir("/sys/class/net"))
    veths = {v for h in hosts for v in h.get("veths", [])} | {name for name in links if LAB_VETH_RE.match(name)}
    for veth in sorted(veths & links):
        _run(["ip", "link", "del", veth], check=False)
    for bridge in [n["bridge"] for n in NETWORKS.values()]:
        if _link_exists(bridge):
            _run(["ip", "link", "del", bridge])
    if state.get("route") or "unreachable" in _run(["ip", "route", "show", "exact", LAB_SUBNET]).stdout:
        _run(["ip", "route", "del", "unreachable", LAB_SUBNET], check=False)
    if HOSTS_DIR.exists():
        _remove_tree(HOSTS_DIR)
    for path in GENERATED:
        path.unlink(missing_ok=True)
    STATE_FILE.unlink(missing_ok=True)
    for pid in list(_CHILDREN):
        _reap(pid)
    return [h["name"] for h in running]


# ---------------------------------------------------------------- generated files

def _yaml_scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)


def _yaml(obj, indent=0):
    """A small YAML emitter for dicts, lists of scalars and scalars (all this inventory needs)."""
    pad = "  " * indent
    lines = []
    for key, value in obj.items():
        key = key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key) else json.dumps(key)
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            lines.extend(_yaml(value, indent + 1))
        elif isinstance(value, list) and value:
            lines.append(f"{pad}{key}:")
            lines.extend(f"{pad}  - {_yaml_scalar(item)}" for item in value)
        elif isinstance(value, (dict, list)):
            lines.append(f"{pad}{key}: {'{}' if isinstance(value, dict) else '[]'}")
        else:
            lines.append(f"{pad}{key}: {_yaml_scalar(value)}")
    return lines


def _info(state):
    hosts = [{key: h[key] for key in ("name", "role", "networks", "addresses", "ansible_host", "host_key", "pid")} for h in state["hosts"]]
    return {
        "hosts": hosts,
        "networks": {name: {k: v for k, v in net.items() if k != "prefix"} for name, net in NETWORKS.items()},
        "controller_address": NETWORKS["mgmt"]["controller_address"],
        "executor_hosts": [h["name"] for h in hosts if h["role"] == "executor"],
        "become_users": BECOME_USERS,
        "ssh_private_key_file": str(KEY_FILE),
        "ssh_config": str(SSH_CONFIG),
        "known_hosts": str(KNOWN_HOSTS),
        "inventory": str(INVENTORY),
        "executor_key_path": "/root/.ssh/id_ed25519",
        "boot_seconds": state.get("boot_seconds"),
    }


def _write_outputs(state):
    hosts = state["hosts"]
    common = f"-o StrictHostKeyChecking=no -o UserKnownHostsFile={KNOWN_HOSTS} -o IdentitiesOnly=yes -o LogLevel=ERROR"
    inventory = {"all": {
        "vars": {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(KEY_FILE),
            "ansible_ssh_common_args": common,
            "ansible_python_interpreter": "/usr/bin/python3",
            "lab_controller_address": NETWORKS["mgmt"]["controller_address"],
            "lab_become_users": BECOME_USERS,
        },
        "hosts": {h["name"]: {"ansible_host": h["ansible_host"], "lab_role": h["role"], "lab_addresses": h["addresses"]} for h in hosts},
        "children": {
            "lab_mgmt": {"hosts": {h["name"]: None for h in hosts if "mgmt" in h["addresses"]}},
            "lab_zone": {"hosts": {h["name"]: None for h in hosts if "zone" in h["addresses"]}},
            "lab_executor_hosts": {"hosts": {h["name"]: None for h in hosts if h["role"] == "executor"}},
        },
    }}
    header = "# Generated by tests/lab/labctl.py up; removed by labctl.py down. Throwaway test lab.\n"
    _write(INVENTORY, header + "\n".join(_yaml(inventory)) + "\n")
    executor = next((h["name"] for h in hosts if h["role"] == "executor"), None)
    blocks = [header]
    for host in hosts:
        blocks.append(f"Host {host['name']}\n  HostName {host['ansible_host']}\n")
        if "mgmt" not in host["addresses"] and executor:
            blocks[-1] += f"  ProxyJump {executor}\n"
    blocks.append(f"Host *\n  User root\n  IdentityFile {KEY_FILE}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
                  f"  UserKnownHostsFile {KNOWN_HOSTS}\n  LogLevel ERROR\n  ConnectTimeout 5\n")
    _write(SSH_CONFIG, "\n".join(blocks))
    known = [f"{h['name']},{addr} {' '.join(h['host_key'].split()[:2])}" for h in hosts for addr in h["addresses"].values()]
    _write(KNOWN_HOSTS, "\n".join(known) + "\n")
    _write(HOSTS_JSON, json.dumps(_info(state), indent=2, ensure_ascii=False) + "\n")
    _ensure_gitignore()


def _ensure_gitignore():
    gitignore = REPO_ROOT / ".gitignore"
    lines = gitignore.read_text(encoding="utf-8").splitlines() if gitignore.exists() else []
    if ".lab/" not in lines and "/.lab/" not in lines:
        with open(gitignore, "a", encoding="utf-8") as handle:
            if lines and not gitignore.read_text(encoding="utf-8").endswith("\n"):
                handle.write("\n")
            handle.write(".lab/\n")


# ---------------------------------------------------------------- API

def up(hosts=3, zone_hosts=0, timeout=SSH_TIMEOUT):
    """Boot a fresh lab (replacing any previous or crashed one); return its description (also in .lab/hosts.json)."""
    _require_prerequisites()
    host_plan = plan(hosts, zone_hosts)
    with _locked():
        stopped = _teardown()
        if stopped:
            log.info("stopped the previous lab (%s)", ", ".join(stopped))
        base = _ensure_base()
        ensure_key()
        state = {"version": 1, "base": str(base), "bridges": [], "route": None, "hosts": [], "started": time.time()}
        _save_state(state)
        try:
            _ensure_inotify(len(host_plan))
            _setup_network(state)
            HOSTS_DIR.mkdir(parents=True, exist_ok=True)
            for host in host_plan:
                _prepare_host(base, host, host_plan)
            started = time.monotonic()
            for host in host_plan:
                state["hosts"].append(host)
                _save_state(state)
                _spawn(base, host)
                _save_state(state)
            for host in host_plan:
                for veth in host["veths"][:1]:
                    if _link_exists(veth):
                        _disable_ipv6(veth)
                if len(host["veths"]) > 1:
                    _attach_extra_veth(host)
            _write_outputs(state)
            _wait_ssh(host_plan, timeout)
            state["boot_seconds"] = round(time.monotonic() - started, 2)
            _save_state(state)
            _write_outputs(state)
        except BaseException:
            log.error("lab up failed, tearing down")
            _teardown()
            raise
    log.info("lab up: %d host(s) answer ssh %.2f s after start; inventory %s", len(host_plan), state["boot_seconds"], INVENTORY)
    return _info(state)


def down():
    """Stop the lab and remove its hosts, bridges, veths, cgroups, route and generated files."""
    _require_prerequisites()
    with _locked():
        stopped = _teardown()
    log.info("lab down: stopped %d host(s)", len(stopped))
    return stopped


def status():
    """What the state file says runs, checked against the live processes and links."""
    state = _load_state()
    hosts = []
    for host in state.get("hosts", []):
        hosts.append({"name": host["name"], "role": host["role"], "pid": host.get("pid"), "addresses": host["addresses"],
                      "alive": "pid" in host and _host_alive(host), "cgroups": host.get("cgroups", [])})
    return {
        "running": bool(hosts) and all(h["alive"] for h in hosts),
        "hosts": hosts,
        "bridges": {net["bridge"]: _link_exists(net["bridge"]) for net in NETWORKS.values()},
        "boot_seconds": state.get("boot_seconds"),
        "state_file": str(STATE_FILE),
        "inventory": str(INVENTORY) if INVENTORY.exists() else None,
    }


def _print_status(info):
    if not info["hosts"]:
        print("lab: not running")
    for host in info["hosts"]:
        addresses = " ".join(f"{net}={addr}" for net, addr in host["addresses"].items())
        print(f"{host['name']:<12} {host['role']:<9} pid={host['pid']!s:<8} {'alive' if host['alive'] else 'DEAD':<6} {addresses}")
    print("bridges: " + ", ".join(f"{name} {'up' if there else 'absent'}" for name, there in info["bridges"].items()))
    if info["inventory"]:
        print(f"inventory: {info['inventory']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="natsops.fleet test lab: systemd-nspawn hosts with sshd (root only).")
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--hosts", type=int, default=3, help="hosts on the management network (default 3)")
    parser.add_argument("--zone-hosts", type=int, default=0, help="extra hosts only on the zone network (default 0)")
    parser.add_argument("--timeout", type=float, default=SSH_TIMEOUT, help="seconds to wait for ssh (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="labctl: %(message)s")
    try:
        if args.action == "up":
            up(args.hosts, args.zone_hosts, args.timeout)
            _print_status(status())
        elif args.action == "down":
            down()
        else:
            _print_status(status())
    except LabError as exc:
        print(f"labctl {args.action}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
