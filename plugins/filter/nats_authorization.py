# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter natsops.fleet.nats_authorization: NATS server authorization from fleet identities.

The permissions come from the wire contract (module_utils/wire/permissions.py); passwords and tokens are
stored as bcrypt hashes. Documentation: nats_authorization.yml next to this file.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_bytes, to_text

from ansible_collections.natsops.fleet.plugins.module_utils.wire.names import DEFAULT_NAMESPACE, WireError
from ansible_collections.natsops.fleet.plugins.module_utils.wire.permissions import ROLES, inbox_prefix_for, permissions

try:
    import bcrypt
except ImportError:  # pragma: no cover - reported when a password needs hashing
    bcrypt = None

BCRYPT_COST = 11
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NKEY_USER_RE = re.compile(r"^U[A-Z2-7]{55}$")
_BCRYPT_RE = re.compile(r"^\$2[abxy]?\$\d{2}\$.{53}$")
_FIELDS = ("name", "role", "password", "nkey", "instances", "inbox_prefix", "bklite", "buckets", "account", "permissions")


def bcrypt_hash(secret: str, current: Optional[str] = None) -> str:
    """A bcrypt hash of ``secret`` with a random salt, or ``current`` (the hash the server has now) while it still
    matches the secret: a second run renders the same configuration, yet whoever reads it must pay bcrypt's cost
    for every guess. A secret that already is a bcrypt hash is used as it is."""
    if _BCRYPT_RE.match(secret):
        return secret  # already a hash
    if bcrypt is None:
        raise AnsibleFilterError("natsops.fleet.nats_authorization needs the Python package bcrypt on the controller "
                                 "(it comes with paramiko) to hash passwords and tokens; or give bcrypt hashes")
    if isinstance(current, str) and _BCRYPT_RE.match(current):
        try:
            if bcrypt.checkpw(to_bytes(secret), to_bytes(current)):
                return current
        except ValueError:
            pass  # not a hash bcrypt can check: make a new one
    return to_text(bcrypt.hashpw(to_bytes(secret), bcrypt.gensalt(BCRYPT_COST)))


def _user(identity: Any, namespace: str, where: str, current: Dict[str, str]) -> Dict[str, Any]:
    problems = []
    if not isinstance(identity, dict):
        raise AnsibleFilterError("%s: an identity is a dictionary with name, role and password or nkey" % where)
    unknown = sorted(set(identity) - set(_FIELDS))
    if unknown:
        problems.append("unknown field(s) %s (known: %s)" % (", ".join(unknown), ", ".join(_FIELDS)))
    name = identity.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        problems.append("name %r must be 1-64 letters, digits, '_' or '-' (it also names the inbox prefix "
                        "_INBOX.<name>)" % (name,))
    role = identity.get("role", "custom")
    if role not in ROLES + ("custom",):
        problems.append("role %r is unknown; use one of %s" % (role, ", ".join(ROLES + ("custom",))))
    password, nkey = identity.get("password"), identity.get("nkey")
    if bool(password) == bool(nkey):
        problems.append("give exactly one of password and nkey")
    if nkey and not (isinstance(nkey, str) and _NKEY_USER_RE.match(nkey)):
        problems.append("nkey must be a user public key (U followed by 55 characters), never a seed")
    if role == "custom" and not isinstance(identity.get("permissions"), dict):
        problems.append("role custom needs permissions (publish/subscribe allow/deny lists)")
    if role != "custom" and identity.get("permissions") is not None:
        problems.append("permissions are only given for role custom; role %s gets the fleet's model" % role)
    if problems:
        raise AnsibleFilterError("%s (%s): %s" % (where, name, "; ".join(problems)))
    entry = {"nkey": nkey} if nkey else {"user": name, "password": bcrypt_hash(str(password), current.get(name))}
    if role == "custom":
        entry["permissions"] = identity["permissions"]
    else:
        try:
            perms = permissions(role, namespace, identity.get("instances") or [],
                                identity.get("inbox_prefix") or inbox_prefix_for(name),
                                bool(identity.get("bklite")), identity.get("buckets"))
        except WireError as exc:
            raise AnsibleFilterError("%s (%s): %s" % (where, name, exc.message)) from exc
        if perms is not None:
            entry["permissions"] = perms
    return entry


def _jetstream(value: Any, where: str) -> Any:
    if value is True or value in ("enabled", "true"):
        return "enabled"
    if value in (False, None, "disabled", "false"):
        return None
    if isinstance(value, dict):
        return dict(value)
    raise AnsibleFilterError("%s: jetstream is true, false or a dictionary of limits (max_mem, max_file, ...)" % where)


def nats_authorization(identities: Optional[List[Any]], namespace: str = DEFAULT_NAMESPACE, accounts: Optional[Dict[str, Any]] = None,
                       token: str = "", system_account: str = "", current: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The NATS server configuration blocks for these identities: ``{"authorization": ...}``, or with
    accounts ``{"accounts": ..., "system_account": ...}``; empty when there is nothing to authorize.
    ``current`` maps user names (and ``token``) to the hashes the server has now (``password_hashes``), which
    are kept while they match."""
    identities = identities or []
    accounts = accounts or {}
    current = current if isinstance(current, dict) else {}
    if not isinstance(identities, list):
        raise AnsibleFilterError("nats_authorization: the identities must be a list")
    if token and (identities or accounts):
        raise AnsibleFilterError("nats_authorization: a token cannot be combined with users or accounts in NATS; "
                                 "use one or the other")
    if token:
        return {"authorization": {"token": bcrypt_hash(str(token), current.get("token"))}}
    names = [i.get("name") for i in identities if isinstance(i, dict)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AnsibleFilterError("nats_authorization: identity names must be unique: %s" % ", ".join(map(str, duplicates)))
    users = [(i.get("account") if isinstance(i, dict) else None, _user(i, namespace, "identity %d" % n, current))
             for n, i in enumerate(identities, 1)]
    result = {}
    if accounts or any(account for account, _user_entry in users):
        if not isinstance(accounts, dict):
            raise AnsibleFilterError("nats_authorization: accounts must be a dictionary of account name -> settings")
        missing = sorted({str(a) for a, _u in users if a not in accounts})
        if missing:
            raise AnsibleFilterError("nats_authorization: with accounts every identity names one of them (account: ...); "
                                     "not defined in accounts: %s" % ", ".join(missing))
        rendered = {}
        for name in sorted(accounts):
            settings = dict(accounts[name] or {})
            unknown = sorted(set(settings) - {"jetstream", "exports", "imports"})
            if unknown:
                raise AnsibleFilterError("account %s: unknown field(s) %s (known: jetstream, exports, imports)"
                                         % (name, ", ".join(unknown)))
            block = {}
            jetstream = _jetstream(settings.get("jetstream"), "account %s" % name)
            if jetstream is not None:
                block["jetstream"] = jetstream
            for key in ("exports", "imports"):
                if settings.get(key):
                    block[key] = settings[key]
            block["users"] = [u for a, u in users if a == name]
            rendered[name] = block
        result["accounts"] = rendered
        if system_account:
            if system_account not in accounts:
                raise AnsibleFilterError("nats_authorization: system_account %s is not one of the accounts" % system_account)
            result["system_account"] = system_account
    elif users:
        result["authorization"] = {"users": [u for _a, u in users]}
    return result


def password_hashes(authorization: Optional[Dict[str, Any]]) -> Dict[str, str]:
    """The hashes of a nats_authorization result, by user name (and ``token``): what a role keeps on the server to
    pass back as ``current`` next time."""
    blocks = [(authorization or {}).get("authorization") or {}]
    blocks += [account for account in ((authorization or {}).get("accounts") or {}).values() if isinstance(account, dict)]
    found: Dict[str, str] = {}
    for block in blocks:
        if block.get("token"):
            found["token"] = block["token"]
        for user in block.get("users") or []:
            if user.get("user") and user.get("password"):
                found[user["user"]] = user["password"]
    return found


class FilterModule:
    """natsops.fleet filters."""

    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"nats_authorization": nats_authorization, "nats_password_hashes": password_hashes}
