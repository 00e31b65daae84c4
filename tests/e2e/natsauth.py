# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Credentials for the auth tests, made for real: bcrypt-free plain users, tokens, NKeys,
operator/account/user JWTs (nats-jwt), and a CA with server and client certificates (openssl)."""

from __future__ import annotations

import os
import subprocess

from nats_jwt.nkeys_ext import create_account_pair, create_user_pair
from nats_jwt.v2.account_claims import AccountClaims
from nats_jwt.v2.snippets import init_new_operator
from nats_jwt.v2.user_claims import UserClaims


def write(path, text, mode=0o600):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return str(path)


def user_password(directory):
    return "authorization { users: [ { user: executor, password: \"exec-Pw-1\" }, { user: ctl, password: \"ctl-Pw-2\" } ] }\n", {
        "executor": {"user": "executor", "password": "exec-Pw-1"},
        "client": {"user": "ctl", "password": "ctl-Pw-2"},
        "secret": "exec-Pw-1",
    }


def token(directory):
    return "authorization { token: \"tok-s3cret-natsops\" }\n", {
        "executor": {"token": "tok-s3cret-natsops"},
        "client": {"token": "tok-s3cret-natsops"},
        "secret": "tok-s3cret-natsops",
    }


def nkey(directory):
    pairs = {}
    for who in ("executor", "client"):
        pair = create_user_pair()
        pairs[who] = (pair.public_key.decode(), write(os.path.join(directory, "%s.nk" % who), pair.seed.decode() + "\n"))
    config = "authorization { users: [ { nkey: %s }, { nkey: %s } ] }\n" % (pairs["executor"][0], pairs["client"][0])
    return config, {"executor": {"nkey": pairs["executor"][1]}, "client": {"nkey": pairs["client"][1]}, "secret": None}


def _creds(jwt, seed):
    return ("-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n\n"
            "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n" % (jwt, seed))


def jwt(directory):
    operator, operator_jwt = init_new_operator("natsops-test")
    account = create_account_pair()  # nats_jwt's create_account() adds a signing key nats-server rejects
    account_jwt = AccountClaims(account.public_key.decode(), "FLEET").encode(operator)
    creds = {}
    for who in ("executor", "client"):
        user = create_user_pair()
        claims = UserClaims(sub=user.public_key.decode(), name=who)
        claims.nats.issuer_account = account.public_key.decode()
        user_jwt = claims.encode(account)
        creds[who] = write(os.path.join(directory, "%s.creds" % who), _creds(user_jwt, user.seed.decode()))
    system = create_account_pair()  # JetStream in operator mode needs a system account
    system_jwt = AccountClaims(system.public_key.decode(), "SYS").encode(operator)
    config = "operator: %s\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: { %s: %s, %s: %s }\n" % (
        operator_jwt, system.public_key.decode(), account.public_key.decode(), account_jwt,
        system.public_key.decode(), system_jwt)
    return config, {"executor": {"creds": creds["executor"]}, "client": {"creds": creds["client"]}, "secret": None}


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def certificates(directory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d = str(directory)
    ca_key, ca = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=natsops test CA", "-keyout", ca_key, "-out", ca)
    made = {"ca": ca}
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        key, csr, cert, extfile = (os.path.join(d, "%s.%s" % (name, s)) for s in ("key", "csr", "pem", "ext"))
        write(extfile, ext + "\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj",
                 "/CN=natsops-%s" % name, "-keyout", key, "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
                 "-extfile", extfile, "-out", cert)
        made[name] = (cert, key)
    return made


def tls(directory, mutual=False):
    certs = certificates(directory)
    server_cert, server_key = certs["server"]
    config = "tls { cert_file: \"%s\", key_file: \"%s\", ca_file: \"%s\"%s }\n" % (
        server_cert, server_key, certs["ca"], ", verify: true" if mutual else "")
    side = {"ca": certs["ca"]}
    if mutual:
        side.update(cert=certs["client"][0], key=certs["client"][1])
    return config, {"executor": dict(side), "client": dict(side), "secret": None}


METHODS = {
    "user_password": user_password,
    "token": token,
    "nkey": nkey,
    "jwt_creds": jwt,
    "tls": tls,
    "mtls": lambda d: tls(d, mutual=True),
}


async def permission_violations(actions, **connect):
    """Connect with ``connect`` (nats.connect arguments), run ``await actions(nc)``, and return the permission
    violations the server reported meanwhile (texts)."""
    import asyncio  # pylint: disable=import-outside-toplevel
    import nats  # pylint: disable=import-outside-toplevel
    errors = []

    async def on_error(exc):
        errors.append(str(exc))

    nc = await nats.connect(error_cb=on_error, allow_reconnect=False, connect_timeout=5, **connect)
    try:
        await actions(nc)
        await nc.flush(timeout=5)
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    return [e for e in errors if "permissions violation" in e.lower()]
