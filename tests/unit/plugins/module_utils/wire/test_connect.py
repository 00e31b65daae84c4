# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import json
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
