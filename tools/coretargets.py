# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-core's own integration targets, run through natsops.fleet.nats (tests/e2e, tests/lab).

The targets are taken at test time from the sdist of the ansible-core that is installed (``pip download
--no-binary :all:``), never copied into this repository. The download and the extracted targets are cached
(``$NATSOPS_CORE_TARGETS_CACHE``, else ``$XDG_CACHE_HOME/natsops-fleet/ansible-core`` or
``~/.cache/natsops-fleet/ansible-core``), so that only the first run pays for it.

A target runs the way ansible-test runs it (:func:`run`): a script target (``runme.sh``) from its own directory
with ``ansible-playbook`` on PATH; a role target as a generated play ``hosts: testhost`` with the target as its
only role, ``gather_facts`` from the target's aliases, ``ANSIBLE_ROLES_PATH`` at the targets directory (so
``needs/target/...`` and meta dependencies resolve) and ansible-test's strict settings. The inventory is
``test/integration/inventory`` of a private copy (:func:`workspace`, :func:`write_inventory`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

import devenv

TARGETS_IN_SDIST = "test/integration/targets/"

# ansible-test's own settings for integration tests (ansible_test/_internal/ansible_util.py), less coverage
STRICT_ENV = {
    "ANSIBLE_FORCE_HANDLERS": "true",             # cleanup handlers run when a target fails
    "ANSIBLE_HOST_PATTERN_MISMATCH": "error",      # a target never passes because its hosts were not found
    "ANSIBLE_DEPRECATION_WARNINGS": "false",
    "ANSIBLE_HOST_KEY_CHECKING": "false",
    "ANSIBLE_RETRY_FILES_ENABLED": "false",
    "ANSIBLE_DEVEL_WARNING": "false",
    "ANSIBLE_NOCOLOR": "true",
    "ANSIBLE_FORCE_COLOR": "0",
    "PAGER": "/bin/cat",
    "ANSIBLE_PYTHON_MODULE_RLIMIT_NOFILE": "1024",  # ansible-test's SOFT_RLIMIT_NOFILE (ansiballz_python checks it)
}

RECAP_RE = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
                      r"failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
                      re.MULTILINE)


def cache_dir():
    base = os.environ.get("NATSOPS_CORE_TARGETS_CACHE")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "natsops-fleet", "ansible-core")
    return base


def installed_version():
    """The version of the ansible-core that runs the tests (the project's virtualenv)."""
    out = subprocess.run([devenv.tool("python"), "-c", "import ansible.release; print(ansible.release.__version__)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@contextlib.contextmanager
def _locked(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def targets_dir(version=None):
    """The integration targets of ansible-core ``version`` (default: the installed one), downloaded once."""
    version = version or installed_version()
    root = os.path.join(cache_dir(), version)
    targets = os.path.join(root, "targets")
    with _locked(root + ".lock"):
        if os.path.isfile(os.path.join(targets, ".complete")):
            return targets
        sdist = _download(version, root)
        staging = tempfile.mkdtemp(prefix="targets-", dir=root)
        try:
            _extract_targets(sdist, staging)
            with open(os.path.join(staging, ".complete"), "w", encoding="utf-8") as handle:
                handle.write("ansible-core %s: %s\n" % (version, os.path.basename(sdist)))
            shutil.rmtree(targets, ignore_errors=True)
            os.rename(staging, targets)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return targets


def _download(version, root):
    name = "ansible_core-%s.tar.gz" % version
    path = os.path.join(root, name)
    if os.path.isfile(path):
        return path
    os.makedirs(root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="download-", dir=root)
    try:
        result = subprocess.run([devenv.tool("python"), "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                                 "--dest", scratch, "ansible-core==%s" % version], capture_output=True, text=True, check=False)
        found = [f for f in os.listdir(scratch) if f.endswith(".tar.gz")]
        if result.returncode != 0 or len(found) != 1:
            raise RuntimeError("could not download the sdist of ansible-core %s with pip (rc %d): %s%s"
                               % (version, result.returncode, result.stdout[-2000:], result.stderr[-2000:]))
        os.rename(os.path.join(scratch, found[0]), path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def _extract_targets(sdist, dest):
    """Extract test/integration/targets/ of the sdist into ``dest`` (regular files, directories, symlinks
    inside the targets only)."""
    with tarfile.open(sdist, "r:gz") as archive:
        members = []
        for member in archive.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) != 2 or not parts[1].startswith(TARGETS_IN_SDIST) or parts[1] == TARGETS_IN_SDIST:
                continue
            if not (member.isfile() or member.isdir() or member.issym()):
                continue
            member.name = parts[1][len(TARGETS_IN_SDIST):]
            members.append(member)
        archive.extractall(dest, members=members, filter="data")


def aliases(targets, name):
    path = os.path.join(targets, name, "aliases")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [line.split("#", 1)[0].strip() for line in handle if line.split("#", 1)[0].strip()]


def workspace(destination, version=None):
    """A private copy of the targets (some targets write next to their files) laid out as in ansible-core's tree:
    ``destination/test/integration/targets``; returns the integration directory, where script targets expect
    their inventory (``../../inventory``, written by :func:`write_inventory`)."""
    integration = os.path.join(destination, "test", "integration")
    shutil.copytree(targets_dir(version), os.path.join(integration, "targets"), symlinks=True)
    return integration


def write_inventory(integration, hosts, groups=None):
    """Write ``integration/inventory`` (JSON): ``hosts`` {name: vars} in group ``testgroup`` as ansible-test does,
    plus ``groups`` {group: {name: vars}}; returns its path."""
    children = {"testgroup": {"hosts": hosts}}
    for group, members in (groups or {}).items():
        children[group] = {"hosts": members}
    path = os.path.join(integration, "inventory")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"all": {"children": children}}, handle, ensure_ascii=False)
    return path


def recap(stdout):
    """PLAY RECAP lines, added up over every playbook run: {host: {ok, changed, unreachable, failed, skipped,
    rescued, ignored}}."""
    totals = {}
    for match in RECAP_RE.finditer(stdout):
        counts = totals.setdefault(match.group("host"), {})
        for key, value in match.groupdict().items():
            if key != "host":
                counts[key] = counts.get(key, 0) + int(value)
    return totals


class Outcome:
    """What one target run gave: rc, output, and the recap per host."""

    def __init__(self, name, result, seconds):
        self.name = name
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.seconds = seconds
        self.recap = recap(result.stdout)

    def explain(self):
        return "ansible-core target %s: rc %d after %.0f s\nSTDOUT (end):\n%s\nSTDERR (end):\n%s" % (
            self.name, self.returncode, self.seconds, self.stdout[-15000:], self.stderr[-4000:])

    def assert_passed(self, hosts):
        """rc 0, and for each of ``hosts`` a recap with something ok and nothing failed or unreachable."""
        assert self.returncode == 0, self.explain()
        for host in hosts:
            assert host in self.recap, "no recap for %s\n%s" % (host, self.explain())
            counts = self.recap[host]
            assert counts["failed"] == 0 and counts["unreachable"] == 0 and counts["ok"] > 0, self.explain()


def environment(integration, output_dir, extra=None):
    """ansible-test's environment for a target: strict settings, roles from the targets, OUTPUT_DIR, INVENTORY_PATH."""
    env = devenv.ansible_env(STRICT_ENV)
    env.update({"ANSIBLE_ROLES_PATH": os.path.join(integration, "targets"), "OUTPUT_DIR": output_dir,
                "INVENTORY_PATH": os.path.join(integration, "inventory")})
    env.update(extra or {})
    return env


def _output_dir(integration, name):
    """A fresh output directory for one run of a target (ansible-test's ``output_dir``)."""
    return tempfile.mkdtemp(prefix="output-%s-" % name, dir=integration)


def run(integration, name, args=(), env=None, timeout=900):
    """Run target ``name`` as ansible-test would: its runme.sh when it has one, else as a role."""
    if os.path.isfile(os.path.join(integration, "targets", name, "runme.sh")):
        return run_script(integration, name, args=args, env=env, timeout=timeout)
    return run_role(integration, name, args=args, env=env, timeout=timeout)


def run_role(integration, name, extra_vars=None, env=None, args=(), timeout=900):
    """Run role target ``name`` against the inventory's ``testhost``, as ansible-test does."""
    if not any(os.path.isfile(os.path.join(integration, "targets", name, "tasks", main)) for main in ("main.yml", "main.yaml")):
        raise ValueError("ansible-core target %s is not a role target (no tasks/main.yml)" % name)
    tags = aliases(os.path.join(integration, "targets"), name)
    gather = "gather_facts/yes" in tags or "gather_facts/no" not in tags
    output_dir = _output_dir(integration, name)
    play = [{"hosts": "testhost", "gather_facts": gather, "vars": {"output_dir": output_dir}, "roles": [name]}]
    path = os.path.join(integration, "%s-%s.yml" % (name, os.path.basename(output_dir)))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(play, handle)
    cmd = [devenv.tool("ansible-playbook"), os.path.basename(path), "-i", "inventory"] + list(args)
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    return _run(name, cmd, integration, environment(integration, output_dir, env), timeout)


def run_script(integration, name, args=(), env=None, script="runme.sh", timeout=900):
    """Run a script target (its ``runme.sh``, or another script of it) from its directory, ansible on PATH."""
    output_dir = _output_dir(integration, name)
    cwd = os.path.join(integration, "targets", name)
    return _run(name, ["bash", script] + list(args), cwd, environment(integration, output_dir, env), timeout)


def _run(name, cmd, cwd, env, timeout):
    """Run in a session of its own, so that a timeout kills the target's whole process tree (ansible-playbook and
    its workers), then report rc -9 with the output so far."""
    started = time.monotonic()
    with subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            stderr += "\n[killed after %d s]" % timeout
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    return Outcome(name, result, time.monotonic() - started)


if __name__ == "__main__":
    print(targets_dir(sys.argv[1] if len(sys.argv) > 1 else None))
