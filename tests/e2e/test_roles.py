# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role variable is documented: the keys of defaults/main.yml are exactly the options of
meta/argument_specs.yml (main entry point), so the two never drift apart."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

import devenv

ROLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "roles")


@pytest.mark.parametrize("role", sorted(r for r in os.listdir(ROLES) if os.path.exists(os.path.join(ROLES, r, "defaults", "main.yml"))))
def test_defaults_match_argument_specs(role):
    with open(os.path.join(ROLES, role, "defaults", "main.yml"), encoding="utf-8") as handle:
        defaults = yaml.safe_load(handle) or {}
    with open(os.path.join(ROLES, role, "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        options = yaml.safe_load(handle)["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, spec in options.items():
        assert spec.get("description") and spec.get("type"), "%s: %s lacks a description or type" % (role, name)
        if not isinstance(defaults[name], str) or "{{" not in defaults[name]:
            assert spec.get("default") == defaults[name], "%s: the documented default of %s differs" % (role, name)


def test_internal_variables_are_not_public():
    for role in os.listdir(ROLES):
        path = os.path.join(ROLES, role, "vars", "main.yml")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                assert all(name.startswith("_%s_" % role) for name in yaml.safe_load(handle)), role


def _task_files():
    for role in sorted(os.listdir(ROLES)):
        directory = os.path.join(ROLES, role, "tasks")
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
            if name.endswith((".yml", ".yaml")):
                yield os.path.join(role, "tasks", name)


def _module(task):
    """The task's module name (the one key that is not a task keyword)."""
    keywords = {"name", "when", "vars", "register", "until", "retries", "delay", "changed_when", "failed_when", "loop",
                "loop_control", "tags", "notify", "become", "become_user", "delegate_to", "run_once", "check_mode",
                "diff", "no_log", "environment", "ignore_errors", "listen", "args", "timeout", "throttle", "any_errors_fatal"}
    return next((key for key in task if key not in keywords), None)


def _gives_message(task):
    """An assert with fail_msg (or msg), or a fail with msg."""
    module, args = _module(task), task.get(_module(task)) or {}
    if module in ("ansible.builtin.assert", "assert"):
        return bool(args.get("fail_msg") or args.get("msg"))
    if module in ("ansible.builtin.fail", "fail"):
        return bool(args.get("msg"))
    return False


def _tasks(items, rescued=False):
    """(task, rescued) for every task of a task list, blocks walked; ``rescued``: an enclosing block's rescue
    fails with a message of its own."""
    for item in items or []:
        if "block" in item:
            yield from _tasks(item["block"], rescued or any(_gives_message(t) for t in item.get("rescue") or []))
            yield from _tasks(item.get("rescue"), rescued)
            yield from _tasks(item.get("always"), rescued)
        else:
            yield item, rescued


def _may_fail_on_a_condition(task):
    """failed_when other than false, or until without it (retries running out fail the task with the module's own
    result, which often has no msg: ansible-core then prints "Unknown error.")."""
    failed_when = task.get("failed_when")
    if failed_when is not None:
        return failed_when not in (False, "false", "False", [False])
    return "until" in task


@pytest.mark.parametrize("path", list(_task_files()))
def test_a_failing_task_says_why(path):
    """A role's task that fails on a condition leaves the verdict to an assert with fail_msg or a fail with msg
    (failed_when: false, then the check), or sits in a block whose rescue fails with a message; every assert and fail
    has its message."""
    with open(os.path.join(ROLES, path), encoding="utf-8") as handle:
        tasks = list(_tasks(yaml.safe_load(handle)))
    assert tasks, path
    for task, rescued in tasks:
        module = _module(task)
        if module in ("ansible.builtin.assert", "assert", "ansible.builtin.fail", "fail"):
            assert _gives_message(task), "%s: task %r: %s without a message" % (path, task.get("name"), module)
        if _may_fail_on_a_condition(task):
            assert rescued, ("%s: task %r fails on failed_when/until with no message of its own; use failed_when: false "
                             "and judge the result in an ansible.builtin.assert with fail_msg" % (path, task.get("name")))


@pytest.mark.parametrize("role", sorted(os.listdir(ROLES)))
def test_every_role_has_a_readme_and_documents_its_variables(role):
    """A README per role, and every public variable the role's files use (``<role>_...``; for the internal _common
    role its ``_common_...`` inputs), other than its tags and the facts it sets, is an option of one of its entry
    points in meta/argument_specs.yml."""
    directory = os.path.join(ROLES, role)
    with open(os.path.join(directory, "README.md"), encoding="utf-8") as handle:
        assert handle.read().startswith("# natsops.fleet.%s\n" % role), role
    with open(os.path.join(directory, "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        specs = yaml.safe_load(handle)["argument_specs"]
    options = set()
    for entry in specs.values():
        options.update(entry.get("options") or {})
    pattern = re.compile(r"(?<![A-Za-z0-9_.'\"])(%s_[a-z0-9_]+)" % re.escape(role))
    used, own = set(), set()
    for sub in ("defaults", "vars", "tasks", "handlers", "templates"):
        for dirpath, _dirs, files in os.walk(os.path.join(directory, sub)):
            for name in files:
                with open(os.path.join(dirpath, name), encoding="utf-8") as handle:
                    text = handle.read()
                used.update(pattern.findall(text))
                if sub == "vars":
                    own.update(yaml.safe_load(text) or {})  # internal constants (_<role>_...)
                if sub == "tasks":
                    for task, _rescued in _tasks(yaml.safe_load(text)):
                        tags = task.get("tags") or []
                        own.update([tags] if isinstance(tags, str) else tags)
                        own.update((task.get("ansible.builtin.set_fact") or {}).keys())
    undocumented = sorted(used - own - options)
    assert not undocumented, "%s: variables used but not in meta/argument_specs.yml: %s" % (role, undocumented)


def test_probe_removal_prints_no_warning(tmp_path):
    """probe_state=absent for the natsops probe (probe_custom is {}) templates no task name of the third-party
    probe's (they name probe_custom.name): no "Encountered 1 template error" warning, nor any other. In check mode, on
    a local host where no probe is installed, so nothing changes."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    probe-host:\n      ansible_connection: local\n"
                         "      ansible_python_interpreter: %s\n" % sys.executable, encoding="utf-8")
    playbook = tmp_path / "absent.yml"
    playbook.write_text("- name: Remove the probe\n  hosts: all\n  gather_facts: false\n  roles:\n"
                        "    - role: natsops.fleet.probe\n      vars:\n        probe_state: absent\n"
                        "        probe_venv: %s/opt/natsops-probe\n        probe_config_dir: %s/etc/natsops-probe\n"
                        % (tmp_path, tmp_path), encoding="utf-8")
    result = subprocess.run([devenv.tool("ansible-playbook"), "--check", "-i", str(inventory), str(playbook)],
                            env=devenv.ansible_env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "changed=0" in result.stdout and "failed=0" in result.stdout, result.stdout[-2000:]
    assert "[WARNING]" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
