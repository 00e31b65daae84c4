# -*- coding: utf-8 -*-
# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Signatures on the wire: who sent a request, and which executor produced a result.

Callers sign every request with an Ed25519 NKey; executors verify it against the public keys they trust and
sign every final result with their own NKey, which callers verify against the key pinned for the instance id
they addressed (``known_executors``). What is signed is the exact message as published, bound to where it was
published: a domain tag, the subject (so a request cannot be redirected to another instance id or operation)
and the SHA-256 of the body (the JSON document, which holds the nonce and expiry, plus any attachment). For a
result, the subject is replaced by the id and nonce of the request it answers.

Keys are NKeys (https://docs.nats.io/running-a-nats-service/configuration/securing_nats/auth_intro/nkey_auth):
seeds ``S…`` in a seed file, an ``.nk`` file or the seed inside a JWT ``.creds`` file; public keys ``U…``
(users), ``A…``, ``O…``, ``N…``. The nkeys library (and PyNaCl under it) does the cryptography; it is imported
only when a key is used, so this module stays importable with the standard library alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .names import TRUST_SOURCES, WireError

H_SIGNER = "Natsops-Signer"
H_SIGNATURE = "Natsops-Signature"

REQUEST_TAG = b"natsops-request-v1"
RESULT_TAG = b"natsops-result-v1"

E_UNSIGNED = "unsigned"                # a signature is required and the request has none
E_BAD_SIGNATURE = "bad_signature"      # the signature does not match the message (altered, or a wrong key)
E_UNTRUSTED_SIGNER = "untrusted_signer"  # a valid signature by a key this executor does not trust (for this id)
E_REPLAYED = "replayed"                # this request (its nonce) was seen before: a captured copy, refused
E_INTEGRITY = "integrity"              # caller side: a result not signed by the executor pinned for the instance id

_SEED_RE = re.compile(rb"S[A-Z2-7]{57}")
_PUBLIC_RE = re.compile(r"^[UANOC][A-Z2-7]{55}$")


class SigningError(ValueError):
    """A key cannot be loaded or parsed (the message names the file or option, never the secret)."""


def new_nonce() -> str:
    """128 random bits, hex: the nonce of one request."""
    return secrets.token_hex(16)


def signed_bytes(tag: bytes, where: str, body: bytes) -> bytes:
    """What a signature covers: domain tag, the subject (or request id) and the SHA-256 of the body."""
    return tag + b"\n" + where.encode("utf-8") + b"\n" + hashlib.sha256(body).digest()


def _nkeys() -> Any:
    try:
        import nkeys  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise SigningError("signing needs the Python package nkeys (pip install nkeys): %s" % exc) from None
    return nkeys


class SigningKey:
    """An NKey seed that signs. Load it with ``from_file`` (seed file, .nk or .creds) or ``from_seed``."""

    def __init__(self, seed: bytes, origin: str) -> None:
        nkeys = _nkeys()
        try:
            self._pair = nkeys.from_seed(bytearray(seed))
            self.public_key = self._pair.public_key.decode("ascii")
        except (nkeys.NkeysError, ValueError, binascii.Error) as exc:
            raise SigningError("%s does not hold a valid NKey seed (%s)" % (origin, type(exc).__name__)) from None
        self.origin = origin

    @classmethod
    def from_file(cls, path: str) -> "SigningKey":
        """The first NKey seed in a file: a seed file, an .nk file, or a JWT .creds file (its user seed)."""
        path = os.path.expanduser(path)
        try:
            with open(path, "rb") as handle:
                found = _SEED_RE.search(handle.read(1 << 16))
        except OSError as exc:
            raise SigningError("cannot read the signing key %s: %s" % (path, exc.strerror or exc)) from None
        if found is None:
            raise SigningError("%s holds no NKey seed (a line starting with S, as written by nsc or nk)" % path)
        return cls(found.group(0), path)

    def sign(self, data: bytes) -> Dict[str, str]:
        """The signature headers of ``data`` (from signed_bytes)."""
        return {H_SIGNER: self.public_key,
                H_SIGNATURE: base64.urlsafe_b64encode(self._pair.sign(data)).decode("ascii").rstrip("=")}

    def __repr__(self) -> str:
        return "SigningKey(%s from %s)" % (self.public_key, self.origin)


def generate_seed(prefix: str = "user") -> bytes:
    """A new NKey seed (for ``natsops.fleet.signing_key`` and the tests)."""
    nkeys = _nkeys()
    import nacl.signing  # pylint: disable=import-outside-toplevel
    prefixes = {"user": nkeys.PREFIX_BYTE_USER, "account": nkeys.PREFIX_BYTE_ACCOUNT, "server": nkeys.PREFIX_BYTE_SERVER}
    return bytes(nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), prefixes[prefix]))


def public_key_problems(value: Any) -> List[str]:
    """[] for an NKey public key (U…, A…, O…, N…, C…: 56 base32 characters with a valid checksum)."""
    if not isinstance(value, str) or not _PUBLIC_RE.match(value):
        return ["%r is not an NKey public key (56 characters, starting with U, A, O, N or C)" % (value,)]
    try:
        _raw_public_key(value)
    except SigningError as exc:
        return [str(exc)]
    return []


def _raw_public_key(public_key: str) -> bytes:
    nkeys = _nkeys()
    raw = base64.b32decode(public_key.encode("ascii"))
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if nkeys.crc16(bytearray(body)) != crc or not nkeys.valid_public_prefix_byte(body[0]):
        raise SigningError("%s is not a valid NKey public key (checksum or prefix)" % public_key)
    return bytes(body[1:])


class Verifier:
    """Checks signatures against a set of trusted public keys (cached, each key decoded once)."""

    def __init__(self, public_keys: Iterable[str] = ()) -> None:
        self._keys: Dict[str, Any] = {}
        for key in public_keys:
            self.add(key)

    def add(self, public_key: str) -> None:
        problems = public_key_problems(public_key)
        if problems:
            raise SigningError(problems[0])
        import nacl.signing  # pylint: disable=import-outside-toplevel
        self._keys[public_key] = nacl.signing.VerifyKey(_raw_public_key(public_key))

    def __contains__(self, public_key: str) -> bool:
        return public_key in self._keys

    def __bool__(self) -> bool:
        return bool(self._keys)

    def keys(self) -> List[str]:
        return sorted(self._keys)

    def verify(self, data: bytes, headers: Optional[Dict[str, str]], what: str) -> str:
        """The signer's public key when ``headers`` carry a valid signature of ``data`` by a trusted key; else
        WireError unsigned / untrusted_signer / bad_signature, saying which key signed (never a secret)."""
        signer, signature = _signature(headers, what)
        key = self._keys.get(signer)
        if key is None:
            raise WireError(E_UNTRUSTED_SIGNER, "%s is signed by %s, which is not trusted here (trusted: %s)"
                            % (what, signer, ", ".join(self.keys()) or "none"), {"signer": signer})
        import nacl.exceptions  # pylint: disable=import-outside-toplevel
        try:
            key.verify(data, signature)
        except nacl.exceptions.BadSignatureError:
            raise WireError(E_BAD_SIGNATURE, "%s carries a signature by %s that does not match its content: it was "
                                             "altered, or signed for another subject" % (what, signer),
                            {"signer": signer}) from None
        return signer


DEFAULT_KNOWN_EXECUTORS = "~/.config/natsops/known_executors"
DEFAULT_SIGNING_KEY = "~/.config/natsops/signing.nk"


def default_signing_key(options: Dict[str, Any]) -> Optional[str]:
    """The file a caller signs with: ``signing_key`` (or its environment variable), else the NKey seed it
    authenticates to NATS with (``nkey``, or the user seed inside ``creds``), else ``~/.config/natsops/signing.nk``
    when it exists (the natsops.fleet.executor role makes it), else None: requests go unsigned."""
    chosen = (options.get("signing_key") or os.environ.get(TRUST_SOURCES["signing_key"]) or options.get("nkey")
              or options.get("creds"))
    if chosen:
        return chosen
    fallback = os.path.expanduser(DEFAULT_SIGNING_KEY)
    return fallback if os.path.isfile(fallback) else None


class KnownExecutors:
    """Which executor keys may answer for which instance id: the caller's pins, like ssh's known_hosts.

    The file has one ``<instance id> <public key>`` per line (``*`` for every instance id; ``#`` starts a
    comment); an instance id with no line is not pinned, and its replies are taken unsigned. The file is read
    again when it changes, so a running control process sees new pins."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = os.path.expanduser(path or os.environ.get(TRUST_SOURCES["known_executors"]) or DEFAULT_KNOWN_EXECUTORS)
        self._stamp: Any = None
        self._keys: Dict[str, List[str]] = {}
        self._verifiers: Dict[str, Verifier] = {}

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._keys, self._verifiers = None, {}, {}
            return
        except OSError as exc:
            raise SigningError("cannot read known_executors %s: %s" % (self.path, exc.strerror or exc)) from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        keys: Dict[str, List[str]] = {}
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                fields = line.split("#", 1)[0].split()
                if not fields:
                    continue
                if len(fields) != 2 or public_key_problems(fields[1]):
                    raise SigningError("known_executors %s line %d: expected '<instance id> <NKey public key>'"
                                       % (self.path, number))
                keys.setdefault(fields[0], []).append(fields[1])
        self._stamp, self._keys, self._verifiers = stamp, keys, {}

    def verifier_for(self, instance_id: str) -> Optional[Verifier]:
        """The keys pinned for ``instance_id`` (its own and ``*``), or None when it is not pinned."""
        self._load()
        verifier = self._verifiers.get(instance_id)
        if verifier is None:
            keys = self._keys.get(instance_id, []) + self._keys.get("*", [])
            if not keys:
                return None
            verifier = self._verifiers[instance_id] = Verifier(keys)
        return verifier


def _signature(headers: Optional[Dict[str, str]], what: str) -> Tuple[str, bytes]:
    headers = headers or {}
    signer, encoded = headers.get(H_SIGNER), headers.get(H_SIGNATURE)
    if not signer or not encoded:
        raise WireError(E_UNSIGNED, "%s is not signed" % what)
    try:
        signature = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (ValueError, binascii.Error):
        signature = b""
    if len(signature) != 64:
        raise WireError(E_BAD_SIGNATURE, "%s carries a malformed signature" % what, {"signer": signer})
    return signer, signature
