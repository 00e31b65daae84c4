# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who may run requests (trusted signers, replays, expiry) and what the audit trail records, without NATS."""

from __future__ import annotations

import json
import time

import pytest

from natsops_executor import config
from natsops_executor._wire import signing
from natsops_executor._wire.contract import E_BAD_REQUEST, KIND_REQUEST, WireError, pack
from natsops_executor._wire.messages import ExecRequest
from natsops_executor.audit import describe_request
from natsops_executor.trust import ReplayGuard, ReplySigner, RequestTrust, binding_of

SUBJECT = "natsops.exec.web1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    found = {}
    for name in ("controller", "old", "stranger", "executor"):
        path = folder / ("%s.nk" % name)
        path.write_bytes(signing.generate_seed() + b"\n")
        found[name] = signing.SigningKey.from_file(str(path))
    return found


def _trust(*signers, instances=("web1",)):
    argv = [arg for inst in instances for arg in ("--instance", inst)]
    argv += [arg for signer in signers for arg in ("--trusted-signer", signer)]
    return RequestTrust(config.load(argv, environ={}))


def _signed(key, subject=SUBJECT, **fields):
    fields.setdefault("expires", time.time() + 10)
    req = ExecRequest.new("_INBOX.c.x", command="true", **fields)
    headers, body = pack(KIND_REQUEST, req.to_dict())
    if key is not None:
        headers.update(key.sign(signing.signed_bytes(signing.REQUEST_TAG, subject, body)))
    return req, headers, body


def test_a_trusted_signature_is_accepted_once(keys):
    trust = _trust(keys["controller"].public_key)
    req, headers, body = _signed(keys["controller"])
    signer = trust.signer_of("web1", SUBJECT, body, headers)
    assert signer == keys["controller"].public_key
    trust.check_fresh(req, signer)
    with pytest.raises(WireError) as info:  # the same request again: a replay
        trust.check_fresh(req, trust.signer_of("web1", SUBJECT, body, headers))
    assert info.value.code == signing.E_REPLAYED


@pytest.mark.parametrize("case, code", [("unsigned", signing.E_UNSIGNED), ("stranger", signing.E_UNTRUSTED_SIGNER),
                                        ("altered", signing.E_BAD_SIGNATURE), ("redirected", signing.E_BAD_SIGNATURE)])
def test_requests_are_refused_with_distinct_codes(keys, case, code):
    trust = _trust(keys["controller"].public_key)
    _req, headers, body = _signed(None if case == "unsigned" else keys["stranger" if case == "stranger" else "controller"],
                                  subject="natsops.exec.web2" if case == "redirected" else SUBJECT)
    if case == "altered":
        body = body.replace(b'"true"', b'"reboot"')
    with pytest.raises(WireError) as info:
        trust.signer_of("web1", SUBJECT, body, headers)
    assert info.value.code == code


def test_two_trusted_keys_at_once_for_rotation(keys):
    trust = _trust(keys["old"].public_key, keys["controller"].public_key)
    for name in ("old", "controller"):
        req, headers, body = _signed(keys[name])
        trust.check_fresh(req, trust.signer_of("web1", SUBJECT, body, headers))


def test_a_signer_trusted_for_one_instance_id_only(keys):
    trust = _trust("web2=" + keys["controller"].public_key, instances=("web1", "web2"))
    _req, headers, body = _signed(keys["controller"], subject="natsops.exec.web2")
    assert trust.signer_of("web2", "natsops.exec.web2", body, headers) == keys["controller"].public_key
    _req, headers, body = _signed(keys["controller"])
    with pytest.raises(WireError) as info:
        trust.signer_of("web1", SUBJECT, body, headers)
    assert info.value.code == signing.E_UNTRUSTED_SIGNER


def test_without_trusted_signers_unsigned_requests_run_but_bad_signatures_never(keys):
    trust = _trust()
    assert not trust.required and "NOT AUTHENTICATED" in trust.describe()[0]
    _req, headers, body = _signed(None)
    assert trust.signer_of("web1", SUBJECT, body, headers) is None
    _req, headers, body = _signed(keys["stranger"])
    assert trust.signer_of("web1", SUBJECT, body, headers) == keys["stranger"].public_key  # intact, though not trusted
    with pytest.raises(WireError):
        trust.signer_of("web1", SUBJECT, body.replace(b"true", b"false"), headers)


def test_a_signed_request_needs_a_short_life(keys):
    trust = _trust(keys["controller"].public_key)
    req, headers, body = _signed(keys["controller"], expires=time.time() + 3600)
    with pytest.raises(WireError) as info:
        trust.check_fresh(req, trust.signer_of("web1", SUBJECT, body, headers))
    assert info.value.code == E_BAD_REQUEST and "at most" in info.value.message


def test_the_replay_guard_forgets_expired_nonces_and_is_bounded():
    guard = ReplayGuard(limit=2)
    guard.remember("a" * 32, time.time() - 1)  # already expired: forgotten at the next sweep
    guard.remember("b" * 32, time.time() + 60)
    guard.remember("c" * 32, time.time() + 60)
    with pytest.raises(WireError) as info:
        guard.remember("d" * 32, time.time() + 60)
    assert info.value.code == E_BAD_REQUEST


def test_replies_are_bound_to_the_request(keys):
    req, _headers, _body = _signed(keys["controller"])
    headers = ReplySigner(keys["executor"], req.binding())(b'{"rc":0}')
    verifier = signing.Verifier([keys["executor"].public_key])
    assert verifier.verify(signing.signed_bytes(signing.RESULT_TAG, req.binding(), b'{"rc":0}'), headers, "result")
    other, _h, _b = _signed(keys["controller"])
    with pytest.raises(WireError):
        verifier.verify(signing.signed_bytes(signing.RESULT_TAG, other.binding(), b'{"rc":0}'), headers, "result")
    assert ReplySigner(None, req.binding())(b"{}") == {}
    _h, body = pack(KIND_REQUEST, req.to_dict())
    assert binding_of(body, _h) == req.binding() == req.id and binding_of(b"{junk", {}) == ""


def test_audit_records_leave_secrets_out():
    req = ExecRequest.new("_INBOX.x", command="echo hi", env={"DB_PASSWORD": "planted-1", "HOME": "/root"},
                          become={"success": "OK", "password": "planted-2"},
                          target={"host": "h", "user": "u", "password": "planted-3", "private_key": "planted-4"})
    text = json.dumps(describe_request(req))
    assert "echo hi" in text and "/root" in text and "u@h:22" in text
    assert not any("planted-%d" % i in text for i in range(1, 5))
    hidden = json.dumps(describe_request(ExecRequest.new("_INBOX.x", command="mysql -pplanted-5", no_log=True)))
    assert "planted-5" not in hidden and "<no_log>" in hidden
