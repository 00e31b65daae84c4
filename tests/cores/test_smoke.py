# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The end-to-end smoke of each older ansible-core the collection supports (meta/runtime.yml, 2.16 and later):
tests/cores/smoke.yml run by that version's own ansible-playbook (its virtualenv under .build/cores/<version>, made
by `make cores`) through natsops.fleet.nats against a real nats-server and executor. ansible-core 2.19 is the
project's own .venv, which every e2e test uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import devenv  # noqa: E402  pylint: disable=wrong-import-position

CORES_DIR = os.path.join(ROOT, ".build", "cores")
# `make cores` names the versions; run alone, the smoke takes every virtualenv it finds
CORES = os.environ.get("NATSOPS_CORES", "").split() or sorted(
    v for v in (os.listdir(CORES_DIR) if os.path.isdir(CORES_DIR) else ())
    if os.path.exists(os.path.join(CORES_DIR, v, "bin", "ansible-playbook")))
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    server = devenv.NatsServer()
    proc = None
    try:
        proc = devenv.ExecutorProcess(server.url, ["core-host"], log_dir=str(tmp_path_factory.mktemp("logs")))
        yield server
    finally:
        if proc is not None:
            proc.stop()
        server.stop()


@pytest.mark.skipif(not CORES, reason="no ansible-core virtualenv under .build/cores (make cores makes them)")
@pytest.mark.parametrize("core", CORES)
def test_smoke(core, site, tmp_path):
    bin_dir = os.path.join(CORES_DIR, core, "bin")
    version = subprocess.run([os.path.join(bin_dir, "python"), "-c", "import ansible; print(ansible.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith(core + "."), version
    work = tmp_path / "work"
    work.mkdir()
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"core-host": {
        "ansible_connection": "natsops.fleet.nats", "ansible_nats_servers": site.url,
        "ansible_python_interpreter": SYSTEM_PYTHON}}, "vars": {"work": str(work), "nats_url": site.url}}}))
    env = devenv.ansible_env({"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")})
    result = subprocess.run([os.path.join(bin_dir, "ansible-playbook"), "-i", str(inventory),
                             os.path.join(ROOT, "tests", "cores", "smoke.yml")],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "failed=0" in result.stdout and "unreachable=0" in result.stdout
    assert (work / "put.txt").read_text() == "put through NATS\n"
    # meta/runtime.yml's requires_ansible covers this version: no "does not support Ansible version" warning
    assert "does not support" not in output, output[-4000:]
