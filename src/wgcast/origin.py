"""Origin signatures: a node signs what it originates; every receiver checks it.

The roster (wgcast.roster) says who may originate what, but the origin of an Update is
the router-id inside it, which any transit member can forge. So the origin signs
(prefix, router-id, seqno, valid-until) and the signature travels with the route hop by
hop (the OriginSig sub-TLV, wire.py); a receiver checks it with the signing key that the
roster lists for the member whose router-id it is. A forged router-id fails (the forger
lacks that member's key), a forged seqno fails (it is signed), and a router-id that no
member has is refused by the roster before any signature is checked.

The signing key is Ed25519 (WireGuard's X25519 keys cannot sign), derived from the node's
WireGuard private key with a domain-separated hash: nothing new to generate, store or
distribute on the node; the roster lists its public half (`sign_key`, printed by
`wgcast roster sign-key`). Whoever holds the WireGuard key can sign, and nobody else.

What a signature does not cover: the metric and the tie-break, which change at every
hop (docs/roster.md, "What a transit member can still do"). Retractions are not signed:
a neighbour can only retract its own route entries.

Pure: bytes and `now` (Unix seconds, the caller's wall clock) in, verdicts out. The
signature body is 4 bytes of valid-until (Unix seconds) and 64 bytes of Ed25519.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wgcast.prefix import Prefix

#: Domain separation: an origin signature cannot be taken for any other signature.
_DOMAIN = b"wgcast origin v1\n"
_KEY_DOMAIN = b"wgcast origin signing key v1\n"
#: A signature is valid this long; it is renewed when half of it is left.
VALIDITY = 600.0
#: Clock difference between nodes that is tolerated (seconds).
SKEW = 60.0
#: A valid-until further ahead than this is refused (a signer with a clock far ahead
#: would otherwise mint signatures that outlive any retraction).
MAX_AHEAD = 3600.0
BODY_LEN = 68
#: Verdicts of `Verifier.check` (reasons of refusal, as counted by the daemon).
UNSIGNED = "unsigned"
BAD = "bad signature"
EXPIRED = "signature expired"


def signing_private(wg_private: bytes) -> bytes:
    """The Ed25519 seed of a node: a hash of its WireGuard private key."""
    if len(wg_private) != 32:
        raise ValueError("a WireGuard private key is 32 bytes")
    return hashlib.blake2b(_KEY_DOMAIN + wg_private, digest_size=32).digest()


def signing_public(wg_private: bytes) -> bytes:
    """The public signing key of a node (what the roster lists as `sign_key`)."""
    key = Ed25519PrivateKey.from_private_bytes(signing_private(wg_private))
    return key.public_key().public_bytes_raw()


def message(prefix: Prefix, router_id: bytes, seqno: int, valid_until: int) -> bytes:
    """The signed bytes: independent of how the prefix was encoded on the wire."""
    return (_DOMAIN + bytes((prefix.version, prefix.prefixlen)) + prefix.network_address.packed
            + router_id + seqno.to_bytes(2, "big") + valid_until.to_bytes(4, "big"))


class Signer:
    """Signs this node's announcements (the engine's `NodeConfig.signer`).

    Signatures are issued per epoch of VALIDITY/2 seconds (shifted per node) and valid
    until the end of the next epoch, so one signed announcement is always valid for at
    least VALIDITY/2; the
    engine rebuilds its cached updates when `epoch()` moves. Each (prefix, seqno) is
    signed once per epoch (a memo, cleared when the epoch moves).
    """

    __slots__ = ("_clock", "_epoch", "_half", "_key", "_memo", "_offset", "enabled", "public",
                 "router_id", "signed")

    def __init__(self, wg_private: bytes, router_id: bytes, clock: Callable[[], float],
                 validity: float = VALIDITY) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(signing_private(wg_private))
        self.public = self._key.public_key().public_bytes_raw()
        self.router_id = router_id
        self._clock = clock
        self._half = validity / 2
        # Epochs shifted by the router-id: the nodes of a mesh renew at different times,
        # so their neighbours' verifications do not all come in the same second.
        self._offset = int.from_bytes(router_id[:2], "big") / 65536 * self._half
        self._epoch = -1
        self._memo: dict[tuple[Prefix, int], bytes] = {}
        #: Signatures made (all time).
        self.signed = 0
        #: Off: announcements go unsigned (no roster to list our key); switched by the
        #: driver when a roster comes or goes.
        self.enabled = True

    def epoch(self) -> int:
        return int((self._clock() + self._offset) // self._half) if self.enabled else -1

    def sign(self, prefix: Prefix, seqno: int) -> bytes:
        if not self.enabled:
            return b""
        epoch = self.epoch()
        if epoch != self._epoch:
            self._epoch = epoch
            self._memo.clear()
        got = self._memo.get((prefix, seqno))
        if got is None:
            until = int((epoch + 2) * self._half - self._offset)
            sig = self._key.sign(message(prefix, self.router_id, seqno, until))
            got = until.to_bytes(4, "big") + sig
            self._memo[(prefix, seqno)] = got
            self.signed += 1
        return got


class Verifier:
    """Checks origin signatures, remembering the good ones: a periodic update, or the
    same route from another neighbour, costs a dict lookup, not a verification."""

    __slots__ = ("_good", "_keys", "hits", "limit", "verified")

    def __init__(self, limit: int = 1 << 17) -> None:
        self.limit = limit
        self._good: dict[tuple[bytes, Prefix, bytes, int, bytes], None] = {}
        self._keys: dict[bytes, Ed25519PublicKey] = {}
        #: Signatures verified (the costly path) and answers from memory (all time).
        self.verified = 0
        self.hits = 0

    def known(self, sign_key: bytes, prefix: Prefix, router_id: bytes, seqno: int,
              body: bytes) -> bool:
        """Was this exact signature verified before (is checking it free)?"""
        return (sign_key, prefix, router_id, seqno, body) in self._good

    def check(self, sign_key: bytes, prefix: Prefix, router_id: bytes, seqno: int,
              body: bytes, now: float) -> str | None:
        """None if `body` is `sign_key`'s valid signature of the route at `now`, else the
        reason: UNSIGNED, BAD or EXPIRED."""
        if not body:
            return UNSIGNED
        if len(body) != BODY_LEN:
            return BAD
        until = int.from_bytes(body[:4], "big")
        if now > until + SKEW:
            return EXPIRED
        if until > now + MAX_AHEAD + SKEW:
            return BAD
        memo = (sign_key, prefix, router_id, seqno, body)
        if memo in self._good:
            self.hits += 1
            return None
        key = self._keys.get(sign_key)
        if key is None:
            if len(self._keys) >= 1 << 16:
                self._keys.clear()
            key = self._keys[sign_key] = Ed25519PublicKey.from_public_bytes(sign_key)
        self.verified += 1
        try:
            key.verify(body[4:], message(prefix, router_id, seqno, until))
        except InvalidSignature:
            return BAD
        if len(self._good) >= self.limit:
            del self._good[next(iter(self._good))]  # the oldest first
        self._good[memo] = None
        return None
