# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How callers find and log in to NATS, as a natscli user expects: contexts (named, by NATS_CONTEXT, selected with
`nats context select`), JetStream domains, refused logins named as such, misspelt connection variables warned
about. A real nats-server with users and a JetStream domain, a real executor, real ansible-playbook."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import devenv
from conftest import PLAYBOOKS, SYSTEM_PYTHON

CTL_PASSWORD = "ctl-Ctx-pw-5"
EXEC_PASSWORD = "exec-Ctx-pw-6"
INSTANCE = "ctx-host"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A server with two users and JetStream domain 'hub', an executor logged in as one of them."""
    server = devenv.NatsServer(jetstream_domain="hub", extra_config=(
        "authorization { users: [ { user: ctl, password: \"%s\" }, { user: ex, password: \"%s\" } ] }\n"
        % (CTL_PASSWORD, EXEC_PASSWORD)))
    logs = tmp_path_factory.mktemp("ctx-logs")
    proc = devenv.ExecutorProcess(server.url, [INSTANCE], extra_args=["--user", "ex"], env={"NATS_PASSWORD": EXEC_PASSWORD},
                                  log_dir=str(logs))
    yield server
    proc.stop()
    server.stop()


def _config_home(tmp_path, selected=None, **contexts):
    """An XDG_CONFIG_HOME holding natscli contexts (and the selected one in context.txt)."""
    home = tmp_path / "xdg"
    (home / "nats" / "context").mkdir(parents=True)
    for name, data in contexts.items():
        (home / "nats" / "context" / ("%s.json" % name)).write_text(json.dumps(data))
    if selected:
        (home / "nats" / "context.txt").write_text(selected)
    return str(home)


def _play(tmp_path, hostvars, env=None, playbook="idempotent.yml", extra_vars=None):
    """ansible-playbook on one host whose NATS options are only those given (no servers unless set)."""
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {INSTANCE: dict({
        "ansible_connection": "natsops.fleet.nats", "ansible_python_interpreter": SYSTEM_PYTHON,
        "ansible_nats_control_persist": 0}, **hostvars)}}}))
    cmd = [devenv.tool("ansible-playbook"), "-i", str(inventory), os.path.join(PLAYBOOKS, playbook),
           "-e", json.dumps(extra_vars or {"work": str(tmp_path / "work")})]
    return subprocess.run(cmd, env=devenv.ansible_env(env), cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300, check=False)


def _ok(result):
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return result


def test_the_selected_context_gives_url_and_credentials(secured, tmp_path):
    home = _config_home(tmp_path, selected="ops", ops={"url": secured.url, "user": "ctl", "password": CTL_PASSWORD})
    result = _ok(_play(tmp_path, {}, env={"XDG_CONFIG_HOME": home}))
    assert "changed=3" in result.stdout and (tmp_path / "work" / "stable.txt").read_text() == "stable\n"
    assert CTL_PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("how", ["variable", "NATS_CONTEXT"])
def test_a_named_context_wins_over_the_selected_one(secured, tmp_path, how):
    home = _config_home(tmp_path, selected="broken", broken={"url": "nats://127.0.0.1:1"},
                        ops={"url": secured.url, "user": "ctl", "password": CTL_PASSWORD})
    env = {"XDG_CONFIG_HOME": home}
    hostvars = {}
    if how == "variable":
        hostvars["ansible_nats_context"] = "ops"
    else:
        env["NATS_CONTEXT"] = "ops"
    _ok(_play(tmp_path, hostvars, env=env))


def test_explicit_options_win_over_the_context(secured, tmp_path):
    home = _config_home(tmp_path, selected="ops", ops={"url": "nats://127.0.0.1:1", "user": "nobody", "password": "x"})
    _ok(_play(tmp_path, {"ansible_nats_servers": secured.url, "ansible_nats_user": "ctl",
                         "ansible_nats_password": CTL_PASSWORD}, env={"XDG_CONFIG_HOME": home}))


def test_a_wrong_password_is_named_as_such_with_the_user_never_the_secret(secured, tmp_path):
    result = _play(tmp_path, {"ansible_nats_servers": secured.url, "ansible_nats_user": "ctl",
                              "ansible_nats_password": "Wrong-pw-for-ctl", "ansible_nats_executor_wait": 0})
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "UNREACHABLE" in output, output[-4000:]
    assert "refused the credentials (Authorization Violation)" in output and "auth=user ctl" in output, output[-4000:]
    assert "no servers available" not in output and "Wrong-pw-for-ctl" not in output


def test_modules_name_a_refused_login_too(secured, tmp_path):
    play = tmp_path / "play.yml"
    play.write_text(json.dumps([{"hosts": "localhost", "connection": "local", "gather_facts": False,
                                 "vars": {"ansible_python_interpreter": devenv.tool("python")},
                                 "tasks": [{"natsops.fleet.server_info": {"servers": secured.url, "user": "ctl",
                                                                          "password": "Wrong-pw-2"}}]}]))
    result = subprocess.run([devenv.tool("ansible-playbook"), "-i", "localhost,", str(play)], env=devenv.ansible_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "refused the credentials (Authorization Violation)" in output, output[-4000:]
    assert "Wrong-pw-2" not in output


def test_jetstream_domain_from_the_context_reaches_the_domains_jetstream(secured, tmp_path):
    """The kv module in domain 'hub' (from the selected context) works; in a domain nobody serves it fails saying
    JetStream did not answer, so the domain really is used."""
    home = _config_home(tmp_path, selected="hub", hub={"url": secured.url, "user": "ctl", "password": CTL_PASSWORD,
                                                       "jetstream_domain": "hub"})
    play = tmp_path / "kv.yml"
    tasks = [{"name": "bucket", "natsops.fleet.kv": {"bucket": "ctxdomain"}},
             {"name": "other domain", "natsops.fleet.kv": {"bucket": "ctxdomain", "jetstream_domain": "elsewhere",
                                                           "connect_timeout": 2},
              "register": "other", "ignore_errors": True},
             {"ansible.builtin.assert": {"that": ["other is failed"]}}]
    play.write_text(json.dumps([{"hosts": "localhost", "connection": "local", "gather_facts": False,
                                 "vars": {"ansible_python_interpreter": devenv.tool("python")}, "tasks": tasks}]))
    result = subprocess.run([devenv.tool("ansible-playbook"), "-i", "localhost,", str(play)],
                            env=devenv.ansible_env({"XDG_CONFIG_HOME": home}), capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0 and "ok=3" in result.stdout, result.stdout[-4000:] + result.stderr[-2000:]


def test_a_misspelt_connection_variable_is_warned_about(secured, tmp_path):
    result = _ok(_play(tmp_path, {"ansible_nats_servers": secured.url, "ansible_nats_user": "ctl",
                                  "ansible_nats_password": CTL_PASSWORD, "ansible_nats_server": "nats://typo:4222"}))
    assert "variable ansible_nats_server (host %s) is not an option" % INSTANCE in result.stderr, result.stderr[-3000:]
    assert "did you mean ansible_nats_servers?" in result.stderr
