# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release path: ansible-galaxy collection build, install into a fresh virtualenv, run a playbook
from the installed collection, with an executor built as a wheel from the installed collection."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import devenv
from conftest import ROOT


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900, **kwargs)
    assert result.returncode == 0, "%s failed:\n%s\n%s" % (cmd, result.stdout[-5000:], result.stderr[-5000:])
    return result


def test_build_install_and_run_from_a_fresh_virtualenv(nats_server, tmp_path):
    _run([devenv.tool("ansible-galaxy"), "collection", "build", "--force", "--output-path", str(tmp_path), ROOT])
    tarball = glob.glob(str(tmp_path / "natsops-fleet-*.tar.gz"))
    assert len(tarball) == 1

    # a clean environment: no ansible.cfg from the checkout, no collection path pointing at it
    clean = dict((k, v) for k, v in os.environ.items() if not k.startswith("ANSIBLE_"))
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    clean["ANSIBLE_CONFIG"] = str(tmp_path / "ansible.cfg")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # the README's install steps on a fresh controller: ansible-core, the collection, its Python dependencies
    _run(pip + ["ansible-core>=2.16"])
    collections = tmp_path / "collections"
    _run([str(venv / "bin" / "ansible-galaxy"), "collection", "install", "--force", "-p", str(collections), tarball[0]],
         env=clean, cwd=str(tmp_path))
    installed = collections / "ansible_collections" / "natsops" / "fleet"
    assert (installed / "plugins" / "connection" / "nats.py").exists()
    assert not (installed / ".venv").exists() and not (installed / ".build").exists()
    _run(pip + ["-r", str(installed / "requirements.txt")])

    # the executor wheel is built from the installed collection, as the executor role does
    wheels = tmp_path / "wheels"
    _run(pip[:3] + ["wheel", "--quiet", "--no-deps", "-w", str(wheels), str(installed)])
    wheel = glob.glob(str(wheels / "natsops_executor-*.whl"))
    assert len(wheel) == 1
    _run(pip + [wheel[0]])

    log = open(tmp_path / "executor.log", "wb")  # pylint: disable=consider-using-with
    executor = subprocess.Popen([str(venv / "bin" / "natsops-executor"), "--server", nats_server.url,  # pylint: disable=consider-using-with
                                 "--instance", "from-galaxy"], stdout=log, stderr=subprocess.STDOUT)
    try:
        inventory = tmp_path / "inventory.json"
        inventory.write_text(json.dumps({"all": {"hosts": {"from-galaxy": {
            "ansible_connection": "natsops.fleet.nats", "ansible_nats_servers": nats_server.url,
            "ansible_python_interpreter": sys.executable}}}}))
        env = dict(clean, ANSIBLE_COLLECTIONS_PATH=str(collections), PATH=str(venv / "bin") + os.pathsep + os.environ["PATH"])
        doc = _run([str(venv / "bin" / "ansible-doc"), "-t", "connection", "natsops.fleet.nats"], env=env)
        assert "ansible_nats_executor" in doc.stdout
        result = _run([str(venv / "bin" / "ansible-playbook"), "-i", str(inventory),
                       os.path.join(ROOT, "tests", "e2e", "playbooks", "idempotent.yml"), "-e",
                       json.dumps({"work": str(tmp_path / "work")})], env=env, cwd=str(tmp_path))
        assert "changed=3" in result.stdout
        assert (tmp_path / "work" / "stable.txt").read_text() == "stable\n"
    finally:
        devenv.stop_process(executor)
        log.close()
