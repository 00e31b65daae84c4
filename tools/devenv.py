# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The embedded default: a loopback nats-server with JetStream plus executors.

Used by ``make demo`` (``tools/devenv.py demo``), by the end-to-end tests and by the
benchmark, so all three run the same real parts. Every process started here is
tracked by PID and stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
COLLECTIONS = os.path.join(ROOT, ".build", "collections")


def tool(name):
    """A tool from the project's virtualenv, else from PATH."""
    path = os.path.join(VENV_BIN, name)
    if os.path.exists(path):
        return path
    found = shutil.which(name)
    if not found:
        raise SystemExit("%s not found: run `make venv` first" % name)
    return found


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("the process exited with %s before listening on port %d" % (proc.returncode, port))
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("nothing listens on %s:%d after %.0f s" % (host, port, timeout))


def stop_process(proc, sig=signal.SIGTERM, timeout=10.0):
    """Stop one process we started, by its PID."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


class NatsServer:
    """A real nats-server on loopback with JetStream, in its own temp dir."""

    def __init__(self, extra_config="", port=None, max_payload=None, listen="127.0.0.1", jetstream_domain=None,
                 max_file_store="1GB"):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="natsops-nats-")
        self.url = "nats://%s:%d" % (listen, self.port)
        self.config = os.path.join(self.dir, "nats.conf")
        domain = ", domain: %s" % jetstream_domain if jetstream_domain else ""
        lines = ["listen: %s:%d" % (listen, self.port),
                 "jetstream { store_dir: %s, max_memory_store: 64MB, max_file_store: %s%s }" % (
                     os.path.join(self.dir, "js"), max_file_store, domain)]
        if max_payload:
            lines.append("max_payload: %d" % max_payload)
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n" + extra_config)
        self.listen = listen
        self.log = self.proc = None
        self.start()

    def start(self):
        """Start (or start again, after kill) the server with its configuration and store."""
        self.log = open(os.path.join(self.dir, "nats.log"), "ab")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen([tool("nats-server"), "-c", self.config], stdout=self.log, stderr=subprocess.STDOUT)  # pylint: disable=consider-using-with
        try:
            wait_port(self.port, proc=self.proc, host=self.listen)
        except RuntimeError as exc:
            self.stop_quietly()
            raise RuntimeError("nats-server did not start: %s\n%s" % (exc, self.read_log()))

    def kill(self):
        """SIGKILL, as a crashed node: no lame duck, no goodbye to clients."""
        stop_process(self.proc, signal.SIGKILL)
        self.log.close()

    def read_log(self):
        with open(os.path.join(self.dir, "nats.log"), "rb") as handle:
            return handle.read().decode("utf-8", "replace")[-4000:]

    def stop_quietly(self):
        stop_process(self.proc)
        self.log.close()

    def stop(self):
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class NatsCluster:
    """``size`` real nats-servers on loopback routed into one cluster with JetStream; ``urls`` lists them all."""

    def __init__(self, size=3, name="c1"):
        ports = [free_port() for _node in range(size)]
        self.servers = []
        try:
            for index, port in enumerate(ports):
                routes = ", ".join("nats://127.0.0.1:%d" % p for p in ports if p != port)
                self.servers.append(NatsServer(extra_config="server_name: n%d\ncluster { name: %s, listen: 127.0.0.1:%d, "
                                                            "routes: [%s] }\n" % (index + 1, name, port, routes)))
        except Exception:
            self.stop()
            raise
        self.urls = [server.url for server in self.servers]

    def stop(self):
        for server in self.servers:
            server.stop()


class ExecutorProcess:
    """A natsops-executor process serving some instance ids.

    ``command`` replaces the launcher (default: the virtualenv's natsops-executor), for example to run it
    as another account; ``inherit_env=False`` starts it with ``env`` alone instead of this environment plus ``env``."""

    def __init__(self, url, instances, extra_args=(), env=None, log_dir=None, command=None, inherit_env=True):
        self.instances = list(instances)
        args = list(command or [tool("natsops-executor")]) + ["--server", url]
        for inst in self.instances:
            args += ["--instance", inst]
        args += list(extra_args)
        self.log_path = os.path.join(log_dir or tempfile.gettempdir(), "executor-%d-%d.log" % (os.getpid(), free_port()))
        self.log = open(self.log_path, "wb")  # pylint: disable=consider-using-with
        full_env = dict(os.environ) if inherit_env else {}
        full_env.update(env or {})
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)  # pylint: disable=consider-using-with
        self._wait_ready()

    def _wait_ready(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("executor exited with %s:\n%s" % (self.proc.returncode, self.output()))
            if " ready: " in self.output():
                return
            time.sleep(0.05)
        raise RuntimeError("executor not ready after %.0f s:\n%s" % (timeout, self.output()))

    def output(self):
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM):
        code = stop_process(self.proc, sig)
        self.log.close()
        return code

    def remove_log(self):
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)


class LabExecutor:
    """natsops-executor on a lab host (tests/lab), as a transient systemd unit: the portable site is copied
    there over ssh and run with the host's own python3 (with the venv's paramiko, as the wheel would install it).
    ``files`` ({remote path: text}) are written first, for example known_hosts or a config file."""

    def __init__(self, lab_host, url, instances, extra_args=(), unit="natsops-lab-executor", files=None, scratch=None):
        import labctl  # pylint: disable=import-outside-toplevel
        import shlex  # pylint: disable=import-outside-toplevel
        self.host = lab_host
        self.unit = unit
        self._ssh = labctl._ssh_argv(lab_host)  # pylint: disable=protected-access
        scratch = scratch or tempfile.mkdtemp(prefix="natsops-labexec-")
        site = portable_site(os.path.join(scratch, "site-%s" % unit))
        archive = subprocess.run(["tar", "-C", site, "-cf", "-", "."], check=True, capture_output=True).stdout
        shutil.rmtree(site, ignore_errors=True)
        home = "/opt/%s" % unit
        self.run("systemctl stop %s 2>/dev/null; systemctl reset-failed %s 2>/dev/null; rm -rf %s && mkdir -p %s && "
                 "tar -C %s -xf -" % (unit, unit, home, home, home), data=archive)
        for path, text in (files or {}).items():
            self.run("mkdir -p %s && cat > %s" % (shlex.quote(os.path.dirname(path)), shlex.quote(path)), data=text.encode())
        args = ["--server", url]
        for inst in instances:
            args += ["--instance", inst]
        args += list(extra_args)
        self.run("systemd-run --unit=%s --setenv=PYTHONPATH=%s /usr/bin/python3 -m natsops_executor %s"
                 % (unit, home, " ".join(shlex.quote(a) for a in args)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if " ready: " in self.log():
                return
            time.sleep(0.3)
        raise RuntimeError("executor %s on %s not ready:\n%s" % (unit, lab_host, self.log()))

    def run(self, command, data=None, check=True):
        result = subprocess.run(self._ssh + [command], input=data, capture_output=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise RuntimeError("%s on %s failed: %s" % (command, self.host, result.stderr.decode("utf-8", "replace")))
        return result

    def log(self):
        return self.run("journalctl -u %s --no-pager -o cat" % self.unit, check=False).stdout.decode("utf-8", "replace")

    def stop(self):
        self.run("systemctl stop %s; systemctl reset-failed %s 2>/dev/null; rm -rf /opt/%s" % (self.unit, self.unit, self.unit),
                 check=False)


# SSH mode's dependencies, as the wheel pulls them in (paramiko>=3.4); binary, for this CPython version
SSH_PACKAGES = ("paramiko", "cryptography", "bcrypt", "nacl", "_cffi_backend")


def portable_site(directory):
    """Copy the executor, the wire contract and the packages it needs (nats-py, PyYAML, nkeys for signatures, and
    paramiko with its binary dependencies, PyNaCl among them) into ``directory``, world-readable, so that ``python3 -m natsops_executor`` runs
    with PYTHONPATH=directory: as another account on this machine, or on a lab host (same CPython version:
    both are Debian 12's 3.11 here). The copies shadow a distribution's older paramiko."""
    import importlib  # pylint: disable=import-outside-toplevel
    shutil.copytree(os.path.join(ROOT, "executor", "natsops_executor"), os.path.join(directory, "natsops_executor"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(ROOT, "plugins", "module_utils", "wire"), os.path.join(directory, "natsops_executor", "_wire"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for package in ("nats", "yaml", "nkeys"):
        shutil.copytree(os.path.dirname(importlib.import_module(package).__file__), os.path.join(directory, package),
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for package in SSH_PACKAGES:
        path = importlib.import_module(package).__file__
        if os.path.basename(path).startswith("__init__."):
            shutil.copytree(os.path.dirname(path), os.path.join(directory, package), ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, directory)
    os.chmod(directory, 0o755)
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return directory


def ansible_env(extra=None):
    """Environment for ansible-* commands run against this checkout."""
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = COLLECTIONS
    env["ANSIBLE_CONFIG"] = os.path.join(ROOT, "ansible.cfg")
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    env.update(extra or {})
    return env


def demo():
    """Start NATS and an executor, run playbooks/demo.yml through them, stop both."""
    nats = NatsServer()
    executor = None
    try:
        executor = ExecutorProcess(nats.url, ["demo-host"])
        print("natsops demo: nats-server %s (JetStream on), natsops-executor serving instance id 'demo-host'" % nats.url, flush=True)
        cmd = [tool("ansible-playbook"), "-i", os.path.join(ROOT, "playbooks", "inventory", "demo.yml"),
               os.path.join(ROOT, "playbooks", "demo.yml")]
        code = subprocess.call(cmd, env=ansible_env({"NATS_URL": nats.url}), cwd=ROOT)
        print("natsops demo: %s" % ("OK" if code == 0 else "FAILED (ansible-playbook exit %d)" % code), flush=True)
        return code
    finally:
        if executor is not None:
            executor.stop()
            executor.remove_log()
        nats.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["demo"])
    parser.parse_args(argv)
    return demo()


if __name__ == "__main__":
    sys.exit(main())
