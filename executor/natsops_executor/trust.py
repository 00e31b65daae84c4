# Copyright (c) natsops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who may run what here, and proof of what this executor answered.

- ``RequestTrust``: a request runs only when it is signed by a trusted NKey (for every instance id, or for the one
  it was sent to), has not expired, and its nonce was not seen before. Without trusted signers the executor runs
  unsigned requests, as before signatures existed, and says so loudly at start.
- ``ReplySigner``: the executor signs its replies (acceptance, result, error) with its own NKey, bound to the
  request's id and nonce, so a caller that pinned this key accepts nothing another party sent.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional

from natsops_executor._wire import signing
from natsops_executor._wire.contract import E_BAD_REQUEST, WireError, unpack
from natsops_executor._wire.messages import Request
from natsops_executor._wire.names import ALL_INSTANCES
from natsops_executor.config import Config

log = logging.getLogger("natsops_executor")

MAX_LIFETIME = 600.0        # seconds a signed request may be valid for (bounds the nonce cache)
MAX_NONCES = 200000         # nonces remembered at most (a flood beyond this within MAX_LIFETIME is refused)


class ReplayGuard:
    """Nonces of signed requests still within their validity; a nonce seen again is a replay."""

    def __init__(self, limit: int = MAX_NONCES) -> None:
        self.limit = limit
        self._seen: Dict[str, float] = {}   # nonce -> until when it matters (insertion order = expiry order, nearly)
        self._next_sweep = 0.0

    def remember(self, nonce: str, until: float) -> None:
        now = time.time()
        if now >= self._next_sweep or len(self._seen) >= self.limit:
            self._seen = {n: t for n, t in self._seen.items() if t > now}
            self._next_sweep = now + 10
        if nonce in self._seen:
            raise WireError(signing.E_REPLAYED, "this request was already received (nonce %s): a copy of a request is "
                                                "never run again" % nonce, {"nonce": nonce})
        if len(self._seen) >= self.limit:
            raise WireError(E_BAD_REQUEST, "too many signed requests within %.0f s to remember; try again" % MAX_LIFETIME)
        self._seen[nonce] = until


class RequestTrust:
    """The trusted signers of each instance id, whether signatures are required, and the replay guard."""

    def __init__(self, cfg: Config) -> None:
        signers = cfg.trusted_signers or {}
        self.required = bool(cfg.require_signatures)
        self.clock_skew = cfg.clock_skew
        self._everywhere = signers.get(ALL_INSTANCES, [])
        self._per_instance = {inst: keys for inst, keys in signers.items() if inst != ALL_INSTANCES}
        self._verifiers: Dict[str, signing.Verifier] = {}
        self._guard = ReplayGuard()

    def describe(self) -> List[str]:
        """Log lines saying what this executor trusts."""
        if not self.required:
            return ["REQUESTS ARE NOT AUTHENTICATED: any NATS client allowed to publish on this executor's subjects can "
                    "run commands here. Turn signatures on: give the controller's NKey public key with --trusted-signer "
                    "(or trusted_signers: in the config file; the natsops.fleet.executor role does this)"]
        lines = ["requests must be signed by: %s" % (", ".join(self._everywhere) or "(see the instance ids below)")]
        lines += ["requests for %s may also be signed by: %s" % (inst, ", ".join(keys))
                  for inst, keys in sorted(self._per_instance.items())]
        return lines

    def _verifier(self, instance: str) -> signing.Verifier:
        verifier = self._verifiers.get(instance)
        if verifier is None:
            verifier = self._verifiers[instance] = signing.Verifier(self._everywhere + self._per_instance.get(instance, []))
        return verifier

    def signer_of(self, instance: str, subject: str, body: bytes, headers: Optional[Dict[str, str]]) -> Optional[str]:
        """The verified signer of a request, or None for an unsigned one where signatures are not required.
        Raises unsigned / untrusted_signer / bad_signature."""
        data = signing.signed_bytes(signing.REQUEST_TAG, subject, body)
        if self.required:
            return self._verifier(instance).verify(data, headers, "the request on %s" % subject)
        claimed = (headers or {}).get(signing.H_SIGNER)
        if not claimed or not (headers or {}).get(signing.H_SIGNATURE):
            return None
        # nobody is trusted here, but a signature that does not match its own key still means an altered request
        try:
            verifier = signing.Verifier([claimed])
        except signing.SigningError as exc:
            raise WireError(signing.E_BAD_SIGNATURE, "the request on %s names a signer that is no NKey public key: %s"
                            % (subject, exc)) from None
        return verifier.verify(data, headers, "the request on %s" % subject)

    def check_fresh(self, req: Request, signer: Optional[str]) -> None:
        """A signed request carries a nonce and an expiry within MAX_LIFETIME, and its nonce is new."""
        if signer is None:
            return
        if req.nonce is None or req.expires is None:
            raise WireError(E_BAD_REQUEST, "a signed request needs a nonce and an expiry (fields 'nonce', 'expires')")
        if req.expires - time.time() > MAX_LIFETIME + self.clock_skew:
            raise WireError(E_BAD_REQUEST, "a signed request may be valid for at most %.0f s; this one expires later"
                            % MAX_LIFETIME)
        self._guard.remember(req.nonce, req.expires + self.clock_skew)


def binding_of(body: bytes, headers: Optional[Dict[str, str]]) -> str:
    """The job id a request names, read leniently (for signing the refusal of a request that did not parse), so
    that its caller can still check who refused it."""
    try:
        doc, _attachment = unpack(headers, body)
    except WireError:
        return ""
    return doc["id"][:128] if isinstance(doc.get("id"), str) else ""


class ReplySigner:
    """Signs the replies to one request with the executor's key (no key: replies are not signed)."""

    def __init__(self, key: Optional[signing.SigningKey], binding: str) -> None:
        self.key = key
        self.binding = binding

    def __call__(self, body: bytes) -> Dict[str, str]:
        if self.key is None:
            return {}
        return self.key.sign(signing.signed_bytes(signing.RESULT_TAG, self.binding, body))
