# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import json
import logging
import ssl

import pytest

from ansible_collections.natsops.fleet.plugins.module_utils.wire import connect as c


def test_split_servers():
    assert c.split_servers("nats://a:4222, nats://b:4222") == ["nats://a:4222", "nats://b:4222"]
    assert c.split_servers(["tls://a"]) == ["tls://a"]
    assert c.split_servers(None) == []
    with pytest.raises(c.ConnectOptionsError, match="needs a scheme"):
        c.split_servers("a:4222")


def test_defaults_to_loopback():
    assert c.connect_kwargs({}, name="t")["servers"] == [c.DEFAULT_SERVER]


@pytest.mark.parametrize("options,needle", [
    ({"user": "u", "token": "t", "password": "p"}, "choose one"),
    ({"user": "u"}, "'password'"),
    ({"password": "p"}, "'user' is not"),
    ({"cert": "/x"}, "together"),
    ({"creds": "/nonexistent.creds"}, "does not exist"),
])
def test_bad_combinations(options, needle):
    with pytest.raises(c.ConnectOptionsError, match=needle):
        c.resolve(options)


def test_auth_mapping(tmp_path):
    creds = tmp_path / "u.creds"
    creds.write_text("x")
    seed = tmp_path / "u.nk"
    seed.write_text("S")
    assert c.connect_kwargs({"creds": str(creds)}, "t")["user_credentials"] == str(creds)
    assert c.connect_kwargs({"nkey": str(seed)}, "t")["nkeys_seed"] == str(seed)
    kwargs = c.connect_kwargs({"user": "u", "password": "p"}, "t")
    assert (kwargs["user"], kwargs["password"]) == ("u", "p")
    assert c.connect_kwargs({"token": "t"}, "t")["token"] == "t"


def test_tls_context_for_tls_urls():
    kwargs = c.connect_kwargs({"servers": "tls://127.0.0.1:4222", "tls_hostname": "nats.example"}, "t")
    assert isinstance(kwargs["tls"], ssl.SSLContext)
    assert kwargs["tls_hostname"] == "nats.example"
    assert "tls" not in c.connect_kwargs({"servers": "nats://127.0.0.1:4222"}, "t")


def test_context_fills_unset_options(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    ctx_dir = tmp_path / "nats" / "context"
    ctx_dir.mkdir(parents=True)
    (ctx_dir / "prod.json").write_text(json.dumps({"url": "nats://ctx:4222", "token": "ctx-token"}))
    opts = c.resolve({"context": "prod"})
    assert opts["servers"] == ["nats://ctx:4222"] and opts["token"] == "ctx-token"
    assert c.resolve({"context": "prod", "servers": "nats://explicit:4222"})["servers"] == ["nats://explicit:4222"]
    with pytest.raises(c.ConnectOptionsError, match="cannot read NATS context"):
        c.resolve({"context": "missing"})


def test_describe_never_shows_secrets():
    text = c.describe({"servers": "nats://a:1", "user": "bob", "password": "hunter2"})
    assert "hunter2" not in text and "user bob" in text
    assert "s3cret" not in c.describe({"token": "s3cret"})


def _contexts(tmp_path, monkeypatch, selected=None, **contexts):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    ctx_dir = tmp_path / "nats" / "context"
    ctx_dir.mkdir(parents=True)
    for name, data in contexts.items():
        (ctx_dir / ("%s.json" % name)).write_text(json.dumps(data))
    if selected:
        (tmp_path / "nats" / "context.txt").write_text(selected + "\n")


def test_the_selected_context_is_read_by_callers_not_by_services(tmp_path, monkeypatch):
    _contexts(tmp_path, monkeypatch, selected="prod", prod={"url": "nats://ctx:4222", "jetstream_domain": "hub"},
              lab={"url": "nats://lab:4222"})
    opts = c.resolve({})
    assert opts["servers"] == ["nats://ctx:4222"] and opts["jetstream_domain"] == "hub" and opts["context"] == "prod"
    assert c.resolve({"context": "lab"})["servers"] == ["nats://lab:4222"]  # the option (or NATS_CONTEXT) wins
    assert c.resolve({"servers": "nats://explicit:4222"})["servers"] == ["nats://explicit:4222"]
    assert c.resolve({}, c.SERVICE)["servers"] == [c.DEFAULT_SERVER]
    assert "context=prod" in c.describe({}) and "jetstream_domain=hub" in c.describe({})


def test_explicit_credentials_replace_the_contexts(tmp_path, monkeypatch):
    _contexts(tmp_path, monkeypatch, prod={"url": "nats://ctx:4222", "user": "ctx", "password": "ctx-secret"})
    opts = c.resolve({"context": "prod", "token": "mine"})
    assert opts["token"] == "mine" and "user" not in opts and "password" not in opts
    assert c.resolve({"context": "prod"})["user"] == "ctx"


def test_credential_uris(tmp_path, monkeypatch):
    seed = tmp_path / "u.nk"
    seed.write_text("SUAxxx")
    assert c.resolve({"nkey": "file://%s" % seed})["nkey"] == str(seed)
    monkeypatch.setenv("MY_CREDS", "-----BEGIN NATS USER JWT-----")
    kwargs = c.connect_kwargs({"creds": "env://MY_CREDS"}, "t")
    assert kwargs["user_credentials"] == "-----BEGIN NATS USER JWT-----" and "MY_CREDS" not in repr(kwargs)
    kwargs = c.connect_kwargs({"nkey": "data:;base64,U1VBeHh4"}, "t")
    assert kwargs["nkeys_seed_str"] == "SUAxxx" and "nkeys_seed" not in kwargs
    for value, needle in (("env://UNSET_VARIABLE_X", "is not set"), ("op://vault/item/field", "op:// is not supported"),
                          ("data:;base64,%%%", "not valid base64")):
        with pytest.raises(c.ConnectOptionsError, match=needle):
            c.resolve({"creds": value})


@pytest.mark.parametrize("field", ["nsc", "user_jwt", "jetstream_api_prefix", "windows_cert_store"])
def test_context_fields_we_cannot_honour_are_refused(tmp_path, monkeypatch, field):
    _contexts(tmp_path, monkeypatch, prod={"url": "nats://ctx:4222", field: "x"})
    with pytest.raises(c.ConnectOptionsError, match="sets '%s'" % field):
        c.resolve({"context": "prod"})


def test_tls_first_and_jetstream_domain(tmp_path, monkeypatch):
    _contexts(tmp_path, monkeypatch, prod={"url": "tls://ctx:4222", "tls_first": True, "jetstream_domain": "leaf"})
    kwargs = c.connect_kwargs({"context": "prod"}, "t")
    assert kwargs["tls_handshake_first"] is True and kwargs["jetstream_domain"] == "leaf"
    assert c.connect_kwargs({"context": "prod", "jetstream_domain": "hub"}, "t")["jetstream_domain"] == "hub"
    with pytest.raises(c.ConnectOptionsError, match="jetstream_domain"):
        c.resolve({"jetstream_domain": "a.b"})


def test_a_refused_login_is_named_with_the_user_never_the_secret():
    errors = [Exception("nats: 'Authorization Violation'"), ConnectionResetError(104, "Connection reset by peer")]
    text = c.connect_failure({"servers": "nats://a:1", "user": "bob", "password": "hunter2"}, c.SESSION,
                             Exception("nats: no servers available for connection"), errors)
    assert "refused the credentials (Authorization Violation)" in text and "user bob" in text
    assert "hunter2" not in text and "no servers available" not in text
    text = c.connect_failure({}, c.SESSION, Exception("nats: no servers available for connection"),
                             [ConnectionRefusedError(111, "Connect call failed")])
    assert text.endswith("Connect call failed") or "Connect call failed" in text


def test_asyncio_ssl_eof_warning_is_filtered_and_nothing_else(caplog):
    """asyncio's sslproto logs SSL_EOF_WARNING whenever nats-py's stream protocol (upgraded to TLS by start_tls) sees
    a server close a TLS connection; connect() installs a filter for exactly that message, once."""
    logger = logging.getLogger("asyncio")
    before = list(logger.filters)
    try:
        c.quiet_ssl_eof_warning()
        c.quiet_ssl_eof_warning()
        assert len(logger.filters) == len(before) + 1
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            logger.warning("returning true from eof_received() has no effect when using ssl")
            logger.warning("Fatal error on SSL transport")
            logger.warning("%s", "something else %d" % 1)
        assert [r.getMessage() for r in caplog.records] == ["Fatal error on SSL transport", "something else 1"]
    finally:
        logger.filters[:] = before
