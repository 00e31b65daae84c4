# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The natsops.fleet.nats_authorization filter: bcrypt hashes, the permission model, accounts, bad input."""

from __future__ import annotations

import bcrypt
import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.natsops.fleet.plugins.filter.nats_authorization import FilterModule, nats_authorization, password_hashes

NKEY = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
FLEET = [
    {"name": "controller", "role": "controller", "password": "c-1"},
    {"name": "exec-mgmt", "role": "executor", "instances": ["管理网"], "password": "e-1"},
    {"name": "probe-web1", "role": "probe", "instances": ["web1"], "nkey": NKEY},
    {"name": "ops", "role": "admin", "password": "o-1"},
    {"name": "reader", "role": "custom", "password": "r-1", "permissions": {"subscribe": {"allow": ["metrics.>"]}}},
]


def test_registered():
    assert FilterModule().filters()["nats_authorization"] is nats_authorization


def test_users_get_bcrypt_hashes_with_random_salts_kept_while_they_match():
    rendered = nats_authorization(FLEET)
    first = rendered["authorization"]["users"]
    assert first != nats_authorization(FLEET)["authorization"]["users"]  # random salts: no shortcut past bcrypt
    current = password_hashes(rendered)
    assert nats_authorization(FLEET, current=current)["authorization"]["users"] == first  # a second run: no change
    changed = nats_authorization([dict(FLEET[0], password="c-2")], current=current)["authorization"]["users"][0]
    assert changed["password"] != current["controller"] and bcrypt.checkpw(b"c-2", changed["password"].encode())
    token = nats_authorization([], token="t-1")
    assert nats_authorization([], token="t-1", current=password_hashes(token)) == token
    by_user = dict((u.get("user", u.get("nkey")), u) for u in first)
    assert bcrypt.checkpw(b"c-1", by_user["controller"]["password"].encode())
    assert "password" not in by_user[NKEY] and "permissions" not in by_user["ops"]
    assert by_user["reader"]["permissions"] == FLEET[4]["permissions"]
    # a value that already is a bcrypt hash is kept
    hashed = by_user["controller"]["password"]
    assert nats_authorization([dict(FLEET[0], password=hashed)])["authorization"]["users"][0]["password"] == hashed


def test_the_permission_model():
    users = dict((u.get("user", u.get("nkey")), u) for u in nats_authorization(FLEET, namespace="ops.fleet")["authorization"]["users"])
    executor = users["exec-mgmt"]["permissions"]
    assert "ops.fleet.exec.管理网" in executor["subscribe"]["allow"]
    assert "_INBOX.exec-mgmt.>" in executor["subscribe"]["allow"] and "_INBOX.>" not in executor["subscribe"]["allow"]
    # an executor publishes nothing of the fleet's but the audit records of its own instance ids
    assert [s for s in executor["publish"]["allow"] if s.startswith("ops.fleet.")] == ["ops.fleet.audit.管理网"]
    assert "$JS.API.STREAM.INFO.OBJ_ops_fleet" in executor["publish"]["allow"] and executor["allow_responses"] is True
    probe = users[NKEY]["permissions"]
    assert "$KV.ops_fleet_registry.web1" in probe["publish"]["allow"]
    assert not any(s.startswith("$JS") for s in probe["publish"]["allow"])
    assert "ops.fleet.exec.web1" in probe["subscribe"]["allow"]
    controller = users["controller"]["permissions"]
    assert "ops.fleet.exec.*" in controller["publish"]["allow"] and "_INBOX.>" in controller["subscribe"]["allow"]


def test_accounts_with_jetstream_and_a_system_account():
    identities = [dict(i, account="FLEET") for i in FLEET[:2]] + [{"name": "sys", "role": "admin", "password": "s", "account": "SYS"}]
    result = nats_authorization(identities, accounts={"FLEET": {"jetstream": {"max_file": "1G"}}, "SYS": {}}, system_account="SYS")
    assert set(result) == {"accounts", "system_account"}
    assert result["accounts"]["FLEET"]["jetstream"] == {"max_file": "1G"}
    assert [u["user"] for u in result["accounts"]["FLEET"]["users"]] == ["controller", "exec-mgmt"]
    assert "jetstream" not in result["accounts"]["SYS"]
    assert nats_authorization([], accounts={"A": {"jetstream": True}})["accounts"]["A"] == {"jetstream": "enabled", "users": []}


def test_a_token():
    token = nats_authorization([], token="t0ken")["authorization"]["token"]
    assert bcrypt.checkpw(b"t0ken", token.encode())
    assert nats_authorization([]) == {}


@pytest.mark.parametrize("identities, kwargs, message", [
    ([{"name": "a", "role": "executor", "password": "x"}], {}, "needs the instance ids"),
    ([{"name": "a", "role": "probe", "instances": ["h1", "h2"], "password": "x"}], {}, "exactly one host id"),
    ([{"name": "a", "role": "boss", "password": "x"}], {}, "role 'boss' is unknown"),
    ([{"name": "a", "role": "admin", "password": "x", "nkey": NKEY}], {}, "exactly one of password and nkey"),
    ([{"name": "a", "role": "admin", "nkey": "SUAM" + "A" * 54}], {}, "never a seed"),
    ([{"name": "a b", "role": "admin", "password": "x"}], {}, "must be 1-64 letters"),
    ([{"name": "a", "role": "executor", "instances": ["${ZONE}"], "password": "x"}], {}, "unrendered"),
    ([{"name": "a", "role": "executor", "instances": ["z"], "password": "x", "inbox_prefix": "_INBOX"}], {}, "own inbox prefix"),
    ([{"name": "a", "role": "custom", "password": "x"}], {}, "role custom needs permissions"),
    ([{"name": "a", "role": "admin", "password": "x", "permissions": {}}], {}, "only given for role custom"),
    ([{"name": "a", "role": "admin", "password": "x", "pasword": "y"}], {}, "unknown field(s) pasword"),
    ([{"name": "a", "role": "admin", "password": "x"}] * 2, {}, "must be unique: a"),
    ([{"name": "a", "role": "admin", "password": "x"}], {"token": "t"}, "cannot be combined"),
    ([{"name": "a", "role": "admin", "password": "x", "account": "B"}], {"accounts": {"A": {}}}, "not defined in accounts: B"),
    ([], {"accounts": {"A": {"jetstrem": True}}}, "unknown field(s) jetstrem"),
    ([], {"accounts": {"A": {}}, "system_account": "SYS"}, "system_account SYS is not one of the accounts"),
])
def test_bad_input_is_refused_with_the_reason(identities, kwargs, message):
    with pytest.raises(AnsibleFilterError) as caught:
        nats_authorization(identities, **kwargs)
    assert message in str(caught.value)
