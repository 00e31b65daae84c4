# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""End-to-end fixtures: a real nats-server with JetStream, real executors, real ansible-playbook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

import devenv  # noqa: E402  pylint: disable=wrong-import-position

PLAYBOOKS = os.path.join(ROOT, "tests", "e2e", "playbooks")
# the tests pin executor keys in a file of their own, never in the user's ~/.config/natsops/known_executors
KNOWN_EXECUTORS = os.path.join(tempfile.mkdtemp(prefix="natsops-e2e-"), "known_executors")
os.environ["NATSOPS_KNOWN_EXECUTORS"] = KNOWN_EXECUTORS
# natscli's selected context (~/.config/nats/context.txt) would steer every caller: the tests read only their own
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="natsops-e2e-xdg-")
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
# NATSOPS_E2E_WARM=false (make e2e-cold): the playbooks' hosts opt out of warm runs (ansible_nats_warm: false), so
# that the connection tests run cold too; by default they run as users get them, warm
E2E_WARM = os.environ.get("NATSOPS_E2E_WARM", "true").lower() not in ("0", "false", "no", "off")


@pytest.fixture(scope="session")
def nats_server():
    server = devenv.NatsServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def audit_stream_made(nats_server):
    """The audit stream on nats_server, as the nats_server role makes it; its name."""
    import asyncio  # pylint: disable=import-outside-toplevel

    import nats  # pylint: disable=import-outside-toplevel
    from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import audit_stream as stream_name  # pylint: disable=import-outside-toplevel

    name = stream_name("natsops")

    async def create():
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().add_stream(name=name, subjects=["natsops.audit.>"])
        finally:
            await nc.close()

    asyncio.run(create())
    return name


@pytest.fixture(scope="session")
def executor(nats_server, tmp_path_factory):
    """One executor serving instance id 'e2e-host' (and the seed incident's 'default')."""
    proc = devenv.ExecutorProcess(nats_server.url, ["e2e-host", "default"], log_dir=str(tmp_path_factory.mktemp("logs")))
    yield proc
    proc.stop()


def executor_load(url, instance="e2e-host"):
    """The executor's load counters (its $SRV STATS through discovery): jobs, and warm hits and cold reasons."""
    from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # pylint: disable=import-outside-toplevel
    client = ExecutorClient({"servers": url}, instance).connect()
    try:
        return [r for r in client.discover(stats=True) if instance in r["instances"]][0]["load"]
    finally:
        client.close()


@pytest.fixture(scope="module")
def compat(nats_server, tmp_path_factory):
    """An executor with --bklite-compat serving '管理网' and 'bk-shared'."""
    proc = devenv.ExecutorProcess(nats_server.url, ["管理网", "bk-shared"], extra_args=["--bklite-compat"],
                                  log_dir=str(tmp_path_factory.mktemp("bklite-logs")))
    yield proc
    proc.stop()


class Playbook:
    """Runs ansible-playbook against one inventory host that uses natsops.fleet.nats."""

    def __init__(self, url, tmp_path):
        self.url = url
        self.tmp_path = tmp_path

    def inventory(self, hostvars=None, host="e2e-host"):
        data = {"all": {"hosts": {host: dict({
            "ansible_connection": "natsops.fleet.nats",
            "ansible_nats_servers": self.url,
            "ansible_python_interpreter": SYSTEM_PYTHON,
            **({} if E2E_WARM else {"ansible_nats_warm": False}),
        }, **(hostvars or {}))}}}
        path = self.tmp_path / ("inventory-%s.json" % host)
        path.write_text(json.dumps(data, ensure_ascii=False))
        return str(path)

    def run(self, playbook, hostvars=None, extra_vars=None, env=None, host="e2e-host", check=True, timeout=600):
        cmd = [devenv.tool("ansible-playbook"), "-i", self.inventory(hostvars, host), os.path.join(PLAYBOOKS, playbook)]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        result = subprocess.run(cmd, env=devenv.ansible_env(env), cwd=str(self.tmp_path), capture_output=True,
                                text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError("ansible-playbook %s failed (rc %d)\nSTDOUT:\n%s\nSTDERR:\n%s" % (
                playbook, result.returncode, result.stdout[-20000:], result.stderr[-5000:]))
        return result


@pytest.fixture
def playbook(nats_server, executor, tmp_path):  # pylint: disable=unused-argument
    return Playbook(nats_server.url, tmp_path)


@pytest.fixture
def client_factory(nats_server, executor):  # pylint: disable=unused-argument
    from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient  # pylint: disable=import-outside-toplevel
    made = []

    def make(instance="e2e-host", **kwargs):
        client = ExecutorClient({"servers": nats_server.url}, instance, **kwargs).connect()
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def local_play(nats_server, executor, tmp_path):  # pylint: disable=unused-argument
    """Runs a list of tasks in a localhost play with the NATS options set through the action group;
    returns the CompletedProcess (text, -v output)."""

    def run(tasks, check=False, defaults=None):
        play = tmp_path / "play.yml"
        module_defaults = {"group/natsops.fleet.nats": {"servers": nats_server.url}}
        module_defaults.update(defaults or {})
        play.write_text(json.dumps([{
            "name": "natsops modules", "hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars": {"ansible_python_interpreter": devenv.tool("python")},
            "module_defaults": module_defaults, "tasks": tasks}], ensure_ascii=False))
        cmd = [devenv.tool("ansible-playbook"), "-i", "localhost,", str(play), "-v"] + (["--check"] if check else [])
        return subprocess.run(cmd, env=devenv.ansible_env(), capture_output=True, text=True, timeout=300, check=False)

    return run


@pytest.fixture
def module_task(local_play, tmp_path):
    """Runs one natsops.fleet module task (failures kept, not fatal) and returns its registered result."""

    def run(module, args, check=False, diff=False):
        out = tmp_path / "module-result.json"
        task = {"name": module, "natsops.fleet.%s" % module: args, "register": "outcome", "ignore_errors": True}
        if diff:
            task["diff"] = True
        play = local_play([task, {"name": "keep the result", "check_mode": False,
                                  "ansible.builtin.copy": {"content": "{{ outcome | to_json }}", "dest": str(out)}}], check=check)
        assert play.returncode == 0, play.stdout[-4000:] + play.stderr[-2000:]
        result = json.loads(out.read_text())
        out.unlink()
        return result

    return run


@pytest.fixture
def four_steps(module_task):
    """The resource modules' idempotence pattern: check (changed), real (changed), check again and real again
    (both unchanged), none failing. Returns the results of the first two."""

    def run(module, args):
        first = module_task(module, args, check=True)
        assert first["changed"] and not first.get("failed"), first
        second = module_task(module, args)
        assert second["changed"] and not second.get("failed"), second
        for check in (True, False):
            again = module_task(module, args, check=check)
            assert not again["changed"] and not again.get("failed"), again
        return first, second

    return run
