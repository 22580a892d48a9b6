"""WireGuard keys and the identities wgcast derives from them.

A node's router-id and every peer's control link-local address are derived from the
WireGuard public key, so they need no configuration and never collide in practice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class InvalidKey(ValueError):
    """A key string that is not 32 bytes of base64 or hex."""


def decode_key(text: str) -> bytes:
    """32-byte key from WireGuard's base64 form (or 64 hex digits, as the UAPI uses)."""
    s = text.strip()
    try:
        raw = bytes.fromhex(s) if len(s) == 64 else base64.b64decode(s, validate=True)
    except (ValueError, binascii.Error) as e:
        raise InvalidKey(f"not a WireGuard key (base64 or hex): {s[:12]}...") from e
    if len(raw) != 32:
        raise InvalidKey(f"a WireGuard key is 32 bytes, this one is {len(raw)}")
    return raw


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def generate_private() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def public_from_private(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )


def shared_secret(private: bytes, peer_public: bytes) -> bytes:
    """X25519 static-static DH: the key of authenticated endpoint probes."""
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )


def router_id(public: bytes) -> bytes:
    """8-byte Babel router-id of a node: a hash of its public key."""
    return hashlib.blake2s(b"wgcast router-id" + public, digest_size=8).digest()


def control_address(public: bytes) -> ipaddress.IPv6Address:
    """The node's control link-local address: fe80::/64 + 64 bits hashed from its key."""
    low = hashlib.blake2s(b"wgcast control" + public, digest_size=8).digest()
    return ipaddress.IPv6Address(bytes.fromhex("fe80000000000000") + low)
