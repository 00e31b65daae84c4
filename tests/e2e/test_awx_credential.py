# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The AWX/AAP credential type extensions/awx/credential_types/nats.yml: valid as AWX validates a custom credential
type, rendered as AWX renders it for a job (awx/main/models/credential/__init__.py CredentialType.inject_credential:
Jinja2 in an immutable sandbox over the inputs that have a value, each file injector written to a temp file whose
path is tower.filename.<name>, then the env injectors), and a real playbook run with exactly that environment
against a nats-server with user/password and mutual TLS and an executor that requires signed requests."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tempfile

import pytest
import yaml
from jinja2 import StrictUndefined, UndefinedError, sandbox

import devenv
import natsauth
from ansible_collections.natsops.fleet.plugins.module_utils.wire import signing
from conftest import PLAYBOOKS, ROOT, SYSTEM_PYTHON

CREDENTIAL_TYPE = os.path.join(ROOT, "extensions", "awx", "credential_types", "nats.yml")
# natscli's names, and natsops' own for what natscli has no name for
ENV_NAMES = {"servers": "NATS_URL", "user": "NATS_USER", "password": "NATS_PASSWORD", "token": "NATS_TOKEN",
             "creds": "NATS_CREDS", "nkey": "NATS_NKEY", "ca": "NATS_CA", "cert": "NATS_CERT", "key": "NATS_KEY",
             "tls_hostname": "NATS_TLS_HOSTNAME", "inbox_prefix": "NATS_INBOX_PREFIX", "jetstream_domain": "NATS_JETSTREAM_DOMAIN",
             "signing_key": "NATSOPS_SIGNING_KEY", "known_executors": "NATSOPS_KNOWN_EXECUTORS"}
FILES = {"creds", "nkey", "ca", "cert", "key", "signing_key", "known_executors"}
SECRETS = {"password", "token", "creds", "nkey", "key", "signing_key"}
# AWX's JSON schema of CredentialType.inputs fields (awx/main/fields.py CredentialTypeInputField)
FIELD_KEYS = {"id", "label", "type", "format", "choices", "help_text", "multiline", "secret", "ask_at_runtime", "default"}
VAR_NAME = re.compile(r"^[a-zA-Z_]+[a-zA-Z0-9_]*$")
FILE_KEY = re.compile(r"^template(\.[a-zA-Z_]+[a-zA-Z0-9_]*)?$")


def load():
    with open(CREDENTIAL_TYPE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def validate(ctype):
    """What AWX checks when the credential type is created (awx/main/fields.py, CredentialTypeInputField and
    CredentialTypeInjectorField): the schema, then every injector rendered with StrictUndefined over EXAMPLE values."""
    assert ctype["kind"] in ("cloud", "net"), "custom credential types are of kind cloud or net"
    assert set(ctype) <= {"name", "description", "kind", "inputs", "injectors"}
    assert set(ctype["inputs"]) <= {"fields", "required"}
    ids = [field["id"] for field in ctype["inputs"]["fields"]]
    assert len(ids) == len(set(ids)) and "tower" not in ids
    for field in ctype["inputs"]["fields"]:
        assert set(field) <= FIELD_KEYS and {"id", "label"} <= set(field), field
        assert VAR_NAME.match(field["id"]) and field.get("type", "string") in ("string", "boolean"), field
    assert set(ctype["inputs"]["required"]) <= set(ids)
    assert set(ctype["injectors"]) <= {"file", "env", "extra_vars"}
    assert all(FILE_KEY.match(key) for key in ctype["injectors"]["file"]) and "template" not in ctype["injectors"]["file"]
    for name, template in ctype["injectors"]["env"].items():
        assert VAR_NAME.match(name) and not name.startswith("ANSIBLE_"), name
        assert template.isascii(), name

    class Filenames:
        pass

    class Tower:
        filename = Filenames()

    namespace = {field: "EXAMPLE" for field in ids}
    namespace["tower"] = Tower()
    for key in ctype["injectors"]["file"]:
        setattr(Tower.filename, key.split(".", 1)[1], "EXAMPLE_FILENAME")
    env = sandbox.ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    for injector in ctype["injectors"].values():
        for key, template in injector.items():
            try:
                env.from_string(template).render(namespace)
            except UndefinedError as exc:  # pragma: no cover - the message is the point
                raise AssertionError("%s uses an undefined field (%s)" % (key, exc)) from None


def inject(ctype, inputs, private_data_dir):
    """CredentialType.inject_credential for one credential: returns the environment variables it adds."""
    class TowerNamespace:
        pass

    tower = TowerNamespace()
    namespace = {"tower": tower}
    for name, value in inputs.items():
        if isinstance(value, bool) or len(value):
            namespace[name] = value
    for field in ctype["inputs"]["fields"]:
        if field.get("type") == "boolean" and field["id"] not in inputs:
            namespace[field["id"]] = False
    sandbox_env = sandbox.ImmutableSandboxedEnvironment()
    env_dir = os.path.join(private_data_dir, "env")
    os.makedirs(env_dir, exist_ok=True)
    for label, template in ctype["injectors"].get("file", {}).items():
        data = sandbox_env.from_string(template).render(**namespace)
        _fd, path = tempfile.mkstemp(dir=env_dir)
        os.close(_fd)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(data)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        if "." not in label:
            tower.filename = path
        else:
            if not hasattr(tower, "filename"):
                tower.filename = TowerNamespace()
            setattr(tower.filename, label.split(".", 1)[1], path)
    return {name: sandbox_env.from_string(template).render(**namespace)
            for name, template in ctype["injectors"].get("env", {}).items()}


def test_the_credential_type_is_what_awx_accepts():
    ctype = load()
    validate(ctype)
    fields = {field["id"]: field for field in ctype["inputs"]["fields"]}
    assert set(fields) == set(ENV_NAMES) and ctype["inputs"]["required"] == ["servers"]
    assert {name for name, field in fields.items() if field.get("secret")} == SECRETS
    assert {name for name, field in fields.items() if field.get("multiline")} == FILES
    assert set(ctype["injectors"]["env"]) == set(ENV_NAMES.values())
    assert {key.split(".", 1)[1] for key in ctype["injectors"]["file"]} == FILES


def test_injectors_give_natscli_names_files_and_nothing_for_empty_fields(tmp_path):
    env = inject(load(), {"servers": "tls://n1:4222,tls://n2:4222", "nkey": "SUAEXAMPLE\n", "ca": "-----BEGIN CERTIFICATE-----\n",
                          "token": ""}, str(tmp_path))
    assert env["NATS_URL"] == "tls://n1:4222,tls://n2:4222"
    with open(env["NATS_NKEY"], encoding="utf-8") as handle:
        assert handle.read() == "SUAEXAMPLE\n"
    assert os.path.dirname(env["NATS_CA"]) == str(tmp_path / "env")
    assert stat.S_IMODE(os.stat(env["NATS_NKEY"]).st_mode) == 0o600
    for name in ("NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS", "NATS_CERT", "NATS_KEY", "NATSOPS_SIGNING_KEY",
                 "NATS_JETSTREAM_DOMAIN"):
        assert env[name] == "", name


@pytest.fixture
def awx_site(tmp_path):
    """nats-server with users and mutual TLS; an executor for 'awx-host' that requires requests signed by the
    controller's key and signs its results; and the inputs of an AWX credential for the controller."""
    certs = natsauth.certificates(tmp_path)
    server = devenv.NatsServer(extra_config=(
        "tls { cert_file: \"%s\", key_file: \"%s\", ca_file: \"%s\", verify: true }\n"
        "authorization { users: [ { user: awx, password: \"Awx-pw-7\" }, { user: ex, password: \"Ex-pw-8\" } ] }\n"
        % (certs["server"][0], certs["server"][1], certs["ca"])))
    url = server.url.replace("nats://", "tls://")
    seeds = {who: signing.generate_seed().decode() for who in ("controller", "executor")}
    public = {who: signing.SigningKey(seed.encode(), who).public_key for who, seed in seeds.items()}
    executor_seed = natsauth.write(tmp_path / "executor.nk", seeds["executor"] + "\n")
    proc = None
    try:
        proc = devenv.ExecutorProcess(url, ["awx-host"], log_dir=str(tmp_path), env={"NATS_PASSWORD": "Ex-pw-8"}, extra_args=[
            "--user", "ex", "--ca", certs["ca"], "--cert", certs["client"][0], "--key", certs["client"][1],
            "--require-signatures", "--trusted-signer", public["controller"], "--signing-key", executor_seed])

        def read(path):
            with open(path, encoding="utf-8") as handle:
                return handle.read()

        inputs = {"servers": url, "user": "awx", "password": "Awx-pw-7", "ca": read(certs["ca"]),
                  "cert": read(certs["client"][0]), "key": read(certs["client"][1]), "signing_key": seeds["controller"],
                  "known_executors": "awx-host %s\n" % public["executor"]}
        yield inputs, proc
    finally:
        if proc is not None:
            proc.stop()
        server.stop()


def run_job(ctype, inputs, tmp_path):
    """One job: the credential injected as AWX injects it, then ansible-playbook awx_job.yml with that environment."""
    injected = inject(ctype, inputs, str(tmp_path / "private_data_dir"))
    # the job's environment: this machine's, without any NATS setting of its own, plus what the credential injects
    env = {k: v for k, v in devenv.ansible_env().items() if not k.startswith(("NATS_", "NATSOPS_"))}
    env.update(injected)
    # every variable of the type is set, those of the fields left empty to "" (as AWX does)
    assert set(ENV_NAMES.values()) <= set(env)
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"awx-host": {
        "ansible_connection": "natsops.fleet.nats", "ansible_python_interpreter": SYSTEM_PYTHON}},
        "vars": {"work": str(tmp_path / "work")}}}))
    (tmp_path / "work").mkdir()
    # the implicit localhost of the second play runs its modules with ansible-playbook's own Python (nats-py)
    result = subprocess.run([devenv.tool("ansible-playbook"), "-i", str(inventory), os.path.join(PLAYBOOKS, "awx_job.yml")],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "failed=0" in result.stdout
    assert (tmp_path / "work" / "from-awx.txt").read_text() == "through NATS from AWX\n"
    return result


def test_a_job_runs_with_the_injected_environment(awx_site, tmp_path):
    """user/password, mutual TLS, signed requests and pinned executor keys; creds, nkey, token empty."""
    inputs, proc = awx_site
    result = run_job(load(), inputs, tmp_path)
    # the executor ran what the controller's key signed, and never saw a secret in a request
    assert "Awx-pw-7" not in result.stdout + result.stderr + proc.output()


def test_a_job_runs_with_an_nkey_credential(tmp_path):
    """An NKey seed pasted into the credential: AWX writes it to a file, NATS_NKEY names it; user, password and the
    TLS files are empty."""
    config, identities = natsauth.nkey(str(tmp_path))
    server = devenv.NatsServer(extra_config=config)
    proc = None
    try:
        proc = devenv.ExecutorProcess(server.url, ["awx-host"], log_dir=str(tmp_path),
                                      extra_args=["--nkey", identities["executor"]["nkey"]])
        with open(identities["client"]["nkey"], encoding="utf-8") as handle:
            seed = handle.read()
        os.unlink(identities["client"]["nkey"])  # the job has only what the credential holds
        run_job(load(), {"servers": server.url, "nkey": seed, "user": "", "password": ""}, tmp_path)
    finally:
        if proc is not None:
            proc.stop()
        server.stop()


def test_without_the_credential_the_secured_server_refuses_the_job(tmp_path):
    """The same job with the fields left empty fails on the secured server: the credential is what lets it in."""
    config, _identities = natsauth.nkey(str(tmp_path))
    server = devenv.NatsServer(extra_config=config)
    try:
        with pytest.raises(AssertionError, match="(?i)authoriz"):
            run_job(load(), {"servers": server.url}, tmp_path)
    finally:
        server.stop()
