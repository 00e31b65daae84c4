# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every NATS auth method, end to end: nats-server configured for it, executor and caller using it."""

from __future__ import annotations

import subprocess

import pytest

import devenv
import natsauth
from ansible_collections.natsops.fleet.plugins.module_utils._client import ExecutorClient, ExecutorUnreachable
from conftest import Playbook

# how the executor command line spells each option
FLAGS = {"user": "--user", "password": "--password", "token": "--token", "creds": "--creds", "nkey": "--nkey",
         "ca": "--ca", "cert": "--cert", "key": "--key"}
# secrets go to the executor through the environment, as the role's unit does
ENV = {"password": "NATS_PASSWORD", "token": "NATS_TOKEN"}


def _executor_args(options):
    args, env = [], {}
    for name, value in options.items():
        if name in ENV:
            env[ENV[name]] = value
        else:
            args += [FLAGS[name], value]
    return args, env


@pytest.fixture(params=sorted(natsauth.METHODS))
def secured(request, tmp_path):
    config, sides = natsauth.METHODS[request.param](tmp_path)
    server = devenv.NatsServer(extra_config=config)
    scheme_url = server.url.replace("nats://", "tls://") if request.param in ("tls", "mtls") else server.url
    args, env = _executor_args(sides["executor"])
    proc = devenv.ExecutorProcess(scheme_url, ["secured"], extra_args=args, env=env, log_dir=str(tmp_path))
    yield request.param, scheme_url, sides, proc
    proc.stop()
    server.stop()


def test_executor_and_caller_authenticate(secured):
    method, url, sides, proc = secured
    client = ExecutorClient(dict(sides["client"], servers=url), "secured").connect()
    try:
        assert client.exec_command("echo %s" % method) == (0, ("%s\n" % method).encode(), b"")
    finally:
        client.close()
    if sides["secret"]:
        assert sides["secret"] not in proc.output(), "secrets must never reach the log"


def test_caller_without_credentials_is_refused(secured):
    method, url, sides, _proc = secured
    options = {"servers": url}
    if method in ("tls", "mtls"):
        options["ca"] = sides["client"]["ca"]  # trust the server, but bring no client certificate
        if method == "tls":
            pytest.skip("plain TLS has no client credential to leave out")
    with pytest.raises(ExecutorUnreachable) as info:
        ExecutorClient(options, "secured", connect_timeout=3).connect()
    assert "cannot connect to NATS" in info.value.message


def test_playbook_through_mutual_tls_and_user_password(tmp_path):
    certs = natsauth.certificates(tmp_path)
    config = ("tls { cert_file: \"%s\", key_file: \"%s\", ca_file: \"%s\", verify: true }\n"
              "authorization { users: [ { user: ansible, password: \"Ans-pw-3\" }, { user: ex, password: \"Ex-pw-4\" } ] }\n"
              % (certs["server"][0], certs["server"][1], certs["ca"]))
    server = devenv.NatsServer(extra_config=config)
    url = server.url.replace("nats://", "tls://")
    proc = devenv.ExecutorProcess(url, ["tls-host"], log_dir=str(tmp_path), env={"NATS_PASSWORD": "Ex-pw-4"},
                                  extra_args=["--user", "ex", "--ca", certs["ca"], "--cert", certs["client"][0],
                                              "--key", certs["client"][1]])
    try:
        book = Playbook(url, tmp_path)
        result = book.run("idempotent.yml", host="tls-host", extra_vars={"work": str(tmp_path / "w")}, hostvars={
            "ansible_nats_ca": certs["ca"], "ansible_nats_cert": certs["client"][0], "ansible_nats_key": certs["client"][1],
            "ansible_nats_user": "ansible", "ansible_nats_password": "Ans-pw-3"})
        assert "changed=3" in result.stdout
        assert "Ans-pw-3" not in result.stdout + result.stderr
    finally:
        proc.stop()
        server.stop()


def test_executor_with_wrong_password_exits_with_a_clear_message(tmp_path):
    config, _sides = natsauth.user_password(tmp_path)
    server = devenv.NatsServer(extra_config=config)
    try:
        result = subprocess.run([devenv.tool("natsops-executor"), "--server", server.url, "--instance", "x", "--user",
                                 "executor"], env=dict(devenv.ansible_env(), NATS_PASSWORD="wrong-Secret-9"),
                                capture_output=True, text=True, timeout=60, check=False)
    finally:
        server.stop()
    assert result.returncode == 3, result.stderr
    assert "cannot connect to NATS" in result.stderr
    assert "wrong-Secret-9" not in result.stderr
