# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import become_loader, connection_loader, fragment_loader


@pytest.fixture
def connection():
    conn = connection_loader.get("natsops.fleet.nats", PlayContext())
    conn.set_options(var_options={"inventory_hostname": "web1"})
    return conn


def test_defaults(connection):
    assert connection.get_option("executor") == "web1"
    assert connection.get_option("servers") is None  # the natscli context's URL, else the loopback default (wire.connect)
    assert connection.get_option("namespace") == "natsops"
    assert connection.get_option("pipelining") is True
    assert connection.get_option("mode") == "agent"


class _AccountClient:
    def __init__(self, account):
        self.asked = 0
        self._account = account

    def account(self, wait):
        self.asked += 1
        return self._account


@pytest.mark.parametrize("reported, expected", [("natsops", "natsops"), (None, "root")])
def test_remote_user_unset_is_the_executors_account_asked_once(connection, reported, expected):
    client = _AccountClient(reported)
    connection._client, connection._connected = client, True
    assert connection.get_option("remote_user") == expected
    assert connection.get_option("remote_user") == expected
    assert client.asked == 1


def test_remote_user_set_or_mode_ssh_never_asks_the_executor():
    conn = connection_loader.get("natsops.fleet.nats", PlayContext())
    conn.set_options(var_options={"inventory_hostname": "web1", "ansible_user": "deploy"})
    assert conn.get_option("remote_user") == "deploy" and conn._client is None
    conn = connection_loader.get("natsops.fleet.nats", PlayContext())
    conn.set_options(var_options={"inventory_hostname": "web1", "ansible_nats_mode": "ssh"})
    assert conn.get_option("remote_user") == "root" and conn._client is None


def test_explicit_executor_wins_over_inventory_hostname():
    conn = connection_loader.get("natsops.fleet.nats", PlayContext())
    conn.set_options(var_options={"inventory_hostname": "web1", "ansible_nats_executor": "管理网"})
    assert conn.get_option("executor") == "管理网"


def _with_become(connection, name, password):
    become = become_loader.get(name)
    become.set_options(direct={"become_pass": password, "become_user": "root"})
    become.build_become_command("/bin/true", connection._shell)  # sets the success marker and prompt
    connection.set_become_plugin(become)
    return become


def test_become_spec_for_sudo_with_password(connection):
    become = _with_become(connection, "ansible.builtin.sudo", "pw")
    spec, use_pty = connection._become_spec(in_data=b"module", sudoable=True)
    assert spec["success"] == become.success and spec["password"] == "pw"
    assert become.prompt.strip().startswith(spec["prompt_prefix"])  # BecomeBase's rule: a line starting with it
    assert "Sorry, try again." in spec["fail"] and "sudo: a password is required" in spec["missing"]
    assert use_pty is False  # pipelined data goes through a pipe, like the local connection


def test_become_spec_without_password_has_no_prompt(connection):
    _with_become(connection, "ansible.builtin.sudo", None)
    spec, use_pty = connection._become_spec(in_data=None, sudoable=True)
    assert "prompt_prefix" not in spec and "prompt_words" not in spec and "password" not in spec and not use_pty


def test_become_spec_su_prompt_matches_localised_prompts(connection):
    _with_become(connection, "ansible.builtin.su", "pw")
    spec, use_pty = connection._become_spec(in_data=None, sudoable=True)
    assert use_pty is True and "Authentication failure" in spec["fail"]
    for word in ("Password", "Passwort", "Mot de passe", "密码"):  # the executor matches them (tests/executor)
        assert word in spec["prompt_words"], word


def test_not_sudoable_means_no_become(connection):
    _with_become(connection, "ansible.builtin.sudo", "pw")
    assert connection._become_spec(in_data=None, sudoable=False) == (None, False)


PLUGIN_MODULE = "ansible_collections.natsops.fleet.plugins.connection.nats"


def _implementation():
    """plugin_utils/_connection.py, the plugin's code (nats.py holds its documentation and loads it)."""
    return __import__("ansible_collections.natsops.fleet.plugins.plugin_utils._connection", fromlist=["Connection"])


def test_preregistered_option_definitions_equal_ansible_core_parse():
    """The plugin hands ansible-core its option definitions (parsed with the C YAML loader) to spare every
    worker the tagging parse; they must be the very data ansible-core's own loader reads from DOCUMENTATION."""
    from ansible import constants as C
    from ansible.parsing.yaml.loader import AnsibleLoader
    from ansible.utils.plugin_docs import add_fragments
    import yaml

    plugin = connection_loader.get("natsops.fleet.nats", class_only=True)
    module = __import__(PLUGIN_MODULE, fromlist=["DOCUMENTATION"])
    assert module.Connection is plugin
    if not getattr(yaml, "CSafeLoader", None):
        pytest.skip("PyYAML without libyaml: the plugin leaves parsing to ansible-core")
    expected = yaml.load(module.DOCUMENTATION, Loader=AnsibleLoader)
    add_fragments(expected, module.__file__, fragment_loader=fragment_loader, is_module=False)
    # ansible-core files a collection plugin's definitions under its Python module name
    registered = C.config.get_configuration_definitions("connection", PLUGIN_MODULE)
    assert registered == expected["options"]
    # the plugin's own merge of its fragments, with the C loader only (what registered them, unless it failed)
    merged = _implementation()._option_definitions(module.DOCUMENTATION, lambda text: yaml.load(text, Loader=yaml.CSafeLoader))
    assert merged == expected["options"]
    assert {"servers", "creds", "namespace", "connect_timeout", "executor"} <= set(merged)


def test_option_definitions_kept_across_workers_equal_a_fresh_parse(tmp_path, monkeypatch):
    """Workers after the first take the definitions from the cache (plugin_utils/_codecache.py): the same data, made
    again when a fragment module changes."""
    import yaml

    if not getattr(yaml, "CSafeLoader", None):
        pytest.skip("PyYAML without libyaml: the plugin leaves parsing to ansible-core")
    monkeypatch.setenv("HOME", str(tmp_path))
    connection_loader.get("natsops.fleet.nats", class_only=True)
    plugin = __import__(PLUGIN_MODULE, fromlist=["DOCUMENTATION"])
    module = _implementation()
    parsed = []

    def load(text):
        parsed.append(1)
        return yaml.load(text, Loader=yaml.CSafeLoader)

    def cached():
        return module._cached_option_definitions(plugin.DOCUMENTATION, plugin.__file__, load, ("v1",))

    fresh = module._option_definitions(plugin.DOCUMENTATION, load)
    parsed.clear()
    assert cached() == fresh and parsed
    parsed.clear()
    assert cached() == fresh and not parsed
    monkeypatch.setattr(module, "_fragments_digest", lambda modules: "another fragment")
    assert cached() == fresh and parsed


def test_login_password_never_becomes_the_nats_password():
    """ansible-core passes ansible_password / -k as the task key 'password': it is the SSH password here."""
    conn = connection_loader.get("natsops.fleet.nats", PlayContext())
    conn.set_options(task_keys={"password": "login-secret"}, var_options={"inventory_hostname": "web1"})
    assert conn.get_option("password") is None
    assert conn.get_option("ssh_password") == "login-secret"
    conn = connection_loader.get("natsops.fleet.nats", PlayContext())
    conn.set_options(task_keys={"password": "login-secret"},
                     var_options={"inventory_hostname": "web1", "ansible_nats_password": "nats-secret", "ansible_nats_user": "u"})
    assert conn.get_option("password") == "nats-secret"
