# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options the controller's plugins read: an environment variable that is set but empty (as an AWX/AAP credential
sets every variable of its type, extensions/awx/credential_types/nats.yml) counts as not set."""
from __future__ import annotations

import os

import pytest

from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader

from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import OPTION_NAMES, TRUST_NAMES
from ansible_collections.natsops.fleet.plugins.plugin_utils import _options
from ansible_collections.natsops.fleet.plugins.module_utils.wire import connect

# what an AWX credential of type "NATS (natsops.fleet)" with only servers, user and password injects
AWX_EMPTY = ("NATS_TOKEN", "NATS_CREDS", "NATS_NKEY", "NATS_CA", "NATS_CERT", "NATS_KEY", "NATS_TLS_HOSTNAME",
             "NATS_INBOX_PREFIX", "NATS_JETSTREAM_DOMAIN", "NATSOPS_SIGNING_KEY", "NATSOPS_KNOWN_EXECUTORS")


@pytest.fixture
def awx_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # no natscli context selected
    monkeypatch.delenv("NATS_CONTEXT", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("NATS_URL", "tls://nats.example.com:4222")
    monkeypatch.setenv("NATS_USER", "awx")
    monkeypatch.setenv("NATS_PASSWORD", "secret")
    for name in AWX_EMPTY:
        monkeypatch.setenv(name, "")
    return tmp_path


def test_ansible_core_turns_an_empty_path_variable_into_the_current_directory(awx_environment):
    conn = connection_loader.get("natsops.fleet.nats", PlayContext())
    conn.set_options(var_options={"inventory_hostname": "web1"})
    # the reason for unset_empty_environment: NATS_CREDS= reads as a creds file named like the job's directory
    assert os.path.realpath(conn.get_option("creds")) == os.path.realpath(str(awx_environment))


def test_the_connection_reads_empty_variables_as_unset(awx_environment):
    conn = connection_loader.get("natsops.fleet.nats", PlayContext())
    conn.set_options(var_options={"inventory_hostname": "web1"})
    options = _options.read_options(conn.get_option, OPTION_NAMES + TRUST_NAMES)
    for name in ("creds", "nkey", "ca", "cert", "key", "token", "signing_key", "known_executors", "jetstream_domain"):
        assert options[name] is None, name
    assert options["user"] == "awx" and options["servers"] == ["tls://nats.example.com:4222"]
    # and the options are a valid connection (without the helper: "option 'creds': file ... does not exist")
    resolved = connect.resolve(options)
    assert resolved["user"] == "awx" and not resolved.get("creds")


def test_a_variable_set_otherwise_keeps_its_value(awx_environment):
    creds = awx_environment / "user.creds"
    creds.write_text("x")
    conn = connection_loader.get("natsops.fleet.nats", PlayContext())
    conn.set_options(var_options={"inventory_hostname": "web1", "ansible_nats_creds": str(creds),
                                  "ansible_nats_user": "", "ansible_nats_password": ""})
    options = _options.read_options(conn.get_option, OPTION_NAMES)
    assert options["creds"] == str(creds)


def test_only_empty_environment_variables_count(tmp_path):
    here = str(tmp_path)
    options = {"creds": here, "ca": here, "servers": [""], "user": "", "namespace": "", "token": "t"}
    _options.unset_empty_environment(options, environ={"NATS_CREDS": "", "NATS_URL": "", "NATS_USER": "",
                                                       "NATS_TOKEN": ""}, cwd=here)
    # NATS_CA is not set at all: a path equal to the current directory then came from somewhere else
    assert options == {"creds": None, "ca": here, "servers": None, "user": None, "namespace": "", "token": "t"}


def test_every_option_with_an_environment_variable_is_covered():
    assert set(_options.ENVIRONMENT) == set(OPTION_NAMES + TRUST_NAMES)
