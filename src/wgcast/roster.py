"""The roster: one mesh-wide, signed statement of who may originate what.

WireGuard authenticates every peer, but not what a peer announces: any member could
announce another member's address or the internet's address space and pull the traffic
to itself. The roster names each member by its WireGuard public key, with the prefixes it
may originate (its own address space; any prefix inside it) and the anycast groups it may
serve (exact prefixes), and the mesh's address space (`mesh_prefixes`): nothing outside it
is ever installed. Every node checks every route against it, transit routes included.

It is one TOML file shared by all nodes, signed by a mesh key (Ed25519; the mesh key's
private half stays with whoever administers the mesh, as a CA key does in Nebula), with a
serial number so that an old roster cannot replace a newer one. Pure: text and bytes in,
a `Roster` or a `RosterError` out; reading and writing files is the caller's business.

    serial = 7
    mesh_prefixes = ["fd5a::/16", "10.66.0.0/16"]

    [[members]]
    name = "n1"
    public_key = "KXzA8tzg...="      # WireGuard public key
    prefixes = ["fd5a:1::/48"]        # may originate these and anything inside them
    groups = ["fd5a:ffff::53/128"]    # may serve these anycast prefixes
    sign_key = "..."                  # signs what it originates (wgcast roster sign-key)

    [[members]]                       # a router that is not a wgcast node (babeld,
    name = "lan-r1"                   # BIRD, FRR on a [[lan]]): named by its Babel
    router_id = "02:00:00:ff:fe:00:00:07"   # router-id instead of a key, never signs
    prefixes = ["fd5a:1a::/48"]

    [signature]                       # written by `wgcast roster sign`
    key = "..."                       # the mesh public key (Ed25519, base64)
    value = "..."                     # Ed25519 over the canonical form (see canonical())
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wgcast.keys import InvalidKey, b64, decode_key, router_id
from wgcast.prefix import Prefix

#: Domain separation: a roster signature can never be mistaken for another signature.
_DOMAIN = b"wgcast roster v1\n"
#: Bounds: a roster is read by every daemon; an absurd one is refused, not processed.
MAX_MEMBERS = 65536
MAX_PREFIXES_PER_MEMBER = 4096
MAX_MESH_PREFIXES = 256
_KEYS = ("serial", "mesh_prefixes", "not_after", "members", "signature")
_MEMBER_KEYS = ("name", "public_key", "router_id", "prefixes", "groups", "sign_key")


class RosterError(ValueError):
    """A roster that cannot be used: says which key and what was expected."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    public_key: bytes
    prefixes: tuple[Prefix, ...]
    groups: tuple[Prefix, ...]
    #: Ed25519 key that signs what it originates (wgcast.origin); None: its routes are
    #: checked against the roster only, unsigned (a member not yet upgraded).
    sign_key: bytes | None = None
    #: A router that is not a wgcast node (babeld, BIRD, FRR on a LAN) is named by its
    #: Babel router-id (8 bytes) instead of a key (`public_key` is then b""): its routes
    #: are checked against its entry like anyone's, unsigned (it cannot sign).
    babel_router_id: bytes | None = None

    @property
    def router_id(self) -> bytes:
        if self.babel_router_id is not None:
            return self.babel_router_id
        return router_id(self.public_key)


@dataclass(frozen=True, slots=True)
class Roster:
    serial: int
    mesh_prefixes: tuple[Prefix, ...]
    members: tuple[Member, ...]
    not_after: datetime | None = None
    #: The mesh public key that signed it (None: unsigned, as written by hand).
    signed_by: bytes | None = None
    signature: bytes | None = None
    #: Members by router-id and by key (built once: every Update looks one up).
    _by_rid: dict[bytes, Member] = field(default_factory=dict, compare=False, repr=False)
    _by_key: dict[bytes, Member] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for m in self.members:
            self._by_rid[m.router_id] = m
            if m.public_key:
                self._by_key[m.public_key] = m

    # ------------------------------------------------------------ queries

    def member(self, public_key: bytes) -> Member | None:
        return self._by_key.get(public_key)

    def member_by_router_id(self, rid: bytes) -> Member | None:
        return self._by_rid.get(rid)

    def in_mesh(self, prefix: Prefix) -> bool:
        """Is `prefix` inside the mesh's address space?"""
        return any(prefix.version == m.version and prefix.subnet_of(m)  # type: ignore[arg-type]
                   for m in self.mesh_prefixes)

    def is_group(self, prefix: Prefix) -> bool:
        return any(prefix in m.groups for m in self.members)

    def may_originate(self, public_key: bytes, prefix: Prefix) -> bool:
        """May the member with this key announce `prefix` as its origin?"""
        m = self.member(public_key)
        return m is not None and _allowed(m, prefix) and self.in_mesh(prefix)

    def why_refused(self, origin_router_id: bytes, prefix: Prefix) -> str | None:
        """None if the member with this router-id may originate `prefix`, else the reason:
        'outside mesh space', 'not in roster' (no such member), 'not allowed' (a member,
        but not this prefix)."""
        if not self.in_mesh(prefix):
            return "outside mesh space"
        m = self.member_by_router_id(origin_router_id)
        if m is None:
            return "not in roster"
        return None if _allowed(m, prefix) else "not allowed"

    def expired(self, now: datetime) -> bool:
        return self.not_after is not None and now >= self.not_after

    # ------------------------------------------------------------ signing

    def canonical(self) -> bytes:
        """The bytes that are signed: independent of TOML layout, order and spelling."""
        doc = {
            "serial": self.serial,
            "mesh_prefixes": sorted(str(p) for p in self.mesh_prefixes),
            "not_after": None if self.not_after is None else self.not_after.isoformat(),
            "members": [
                {"name": m.name,
                 # A router-id member in place of the key (rosters without any stay valid).
                 **({"public_key": b64(m.public_key)} if m.babel_router_id is None else
                    {"router_id": m.babel_router_id.hex()}),
                 "prefixes": sorted(str(p) for p in m.prefixes),
                 "groups": sorted(str(p) for p in m.groups),
                 # Only when set: rosters signed before sign_key existed stay valid.
                 **({} if m.sign_key is None else {"sign_key": b64(m.sign_key)})}
                for m in sorted(self.members,
                                key=lambda m: (m.public_key, m.babel_router_id or b""))
            ],
        }
        return _DOMAIN + json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, mesh_private: bytes) -> Roster:
        key = Ed25519PrivateKey.from_private_bytes(mesh_private)
        pub = key.public_key().public_bytes_raw()
        return Roster(self.serial, self.mesh_prefixes, self.members, self.not_after, pub,
                      key.sign(self.canonical()))

    def verify(self, mesh_public: bytes) -> None:
        """Raise RosterError unless signed by `mesh_public`."""
        if self.signature is None or self.signed_by is None:
            raise RosterError("roster: not signed (wgcast roster sign)")
        if self.signed_by != mesh_public:
            raise RosterError(f"roster: signed by {b64(self.signed_by)}, not by the mesh key "
                              f"{b64(mesh_public)}")
        try:
            Ed25519PublicKey.from_public_bytes(mesh_public).verify(self.signature,
                                                                   self.canonical())
        except InvalidSignature:
            raise RosterError("roster: bad signature (changed after signing?)") from None

    # ------------------------------------------------------------ text

    def to_toml(self) -> str:
        lines = ["# wgcast roster: who may originate what in this mesh (wgcast roster).",
                 f"serial = {self.serial}",
                 f"mesh_prefixes = {_list(self.mesh_prefixes)}"]
        if self.not_after is not None:
            lines.append(f'not_after = "{self.not_after.isoformat()}"')
        for m in self.members:
            lines += ["", "[[members]]", f"name = {json.dumps(m.name)}",
                      f'public_key = "{b64(m.public_key)}"' if m.babel_router_id is None
                      else f'router_id = "{format_router_id(m.babel_router_id)}"',
                      f"prefixes = {_list(m.prefixes)}", f"groups = {_list(m.groups)}"]
            if m.sign_key is not None:
                lines.append(f'sign_key = "{b64(m.sign_key)}"')
        if self.signature is not None and self.signed_by is not None:
            lines += ["", "[signature]", f'key = "{b64(self.signed_by)}"',
                      f'value = "{base64.b64encode(self.signature).decode()}"']
        return "\n".join(lines) + "\n"


def format_router_id(rid: bytes) -> str:
    """A Babel router-id as babeld writes it: 02:00:00:ff:fe:00:00:07."""
    return ":".join(f"{b:02x}" for b in rid)


def parse_router_id(text: str) -> bytes:
    """A router-id from `02:00:00:ff:fe:00:00:07` (babeld's form) or 16 hex digits."""
    raw = text.replace(":", "") if text.count(":") == 7 else text
    try:
        rid = bytes.fromhex(raw) if len(raw) == 16 else b""
    except ValueError:
        rid = b""
    if len(rid) != 8 or rid in (bytes(8), b"\xff" * 8):
        raise ValueError("expected a Babel router-id: 8 bytes as 02:00:00:ff:fe:00:00:07 "
                         "or 16 hex digits, not all zeros or all ones")
    return rid


def _list(prefixes: tuple[Prefix, ...]) -> str:
    return "[" + ", ".join(f'"{p}"' for p in prefixes) + "]"


def _allowed(m: Member, prefix: Prefix) -> bool:
    if prefix in m.groups:
        return True
    return any(prefix.version == p.version and prefix.subnet_of(p)  # type: ignore[arg-type]
               for p in m.prefixes)


# ---------------------------------------------------------------- parsing


def parse(text: str, where: str = "roster") -> Roster:
    """A roster from TOML text; RosterError names `where`, the key and what was expected."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RosterError(f"{where}: not valid TOML: {e}") from None
    _only(data, _KEYS, where)
    serial = data.get("serial")
    if not isinstance(serial, int) or isinstance(serial, bool) or not 0 <= serial < 1 << 63:
        raise RosterError(f"{where}: serial: expected an integer >= 0")
    mesh = _prefixes(data.get("mesh_prefixes"), f"{where}: mesh_prefixes", MAX_MESH_PREFIXES)
    if not mesh:
        raise RosterError(f"{where}: mesh_prefixes: expected at least one prefix")
    not_after = None
    if "not_after" in data:
        raw = data["not_after"]
        try:
            not_after = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
        except ValueError:
            raise RosterError(f"{where}: not_after: expected an ISO 8601 time") from None
        if not_after.tzinfo is None:
            not_after = not_after.replace(tzinfo=UTC)
    members_raw = data.get("members", [])
    if not isinstance(members_raw, list) or len(members_raw) > MAX_MEMBERS:
        raise RosterError(f"{where}: members: expected at most {MAX_MEMBERS} [[members]]")
    members: list[Member] = []
    seen_keys: dict[bytes, str] = {}
    seen_sign: dict[bytes, str] = {}
    seen_rids: dict[bytes, str] = {}
    seen_names: set[str] = set()
    owner: list[tuple[Prefix, str]] = []
    for i, raw_m in enumerate(members_raw):
        at = f"{where}: members[{i}]"
        if not isinstance(raw_m, dict):
            raise RosterError(f"{at}: expected a table")
        _only(raw_m, _MEMBER_KEYS, at)
        name = raw_m.get("name")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise RosterError(f"{at}.name: expected a name of 1 to 64 characters")
        if name in seen_names:
            raise RosterError(f"{at}.name: {name!r} appears twice")
        seen_names.add(name)
        babel_rid: bytes | None = None
        if "router_id" in raw_m:
            if "public_key" in raw_m or "sign_key" in raw_m:
                raise RosterError(f"{at}.router_id: expected either public_key (a wgcast "
                                  "node) or router_id (another Babel router, which cannot "
                                  "sign: no sign_key), not both")
            try:
                babel_rid = parse_router_id(str(raw_m["router_id"]))
            except ValueError as e:
                raise RosterError(f"{at}.router_id: {e}") from None
            key = b""
        else:
            try:
                key = decode_key(str(raw_m.get("public_key", "")))
            except InvalidKey as e:
                raise RosterError(f"{at}.public_key: {e}") from None
            if key in seen_keys:
                raise RosterError(f"{at}.public_key: also the key of {seen_keys[key]!r}")
            seen_keys[key] = name
        rid = babel_rid if babel_rid is not None else router_id(key)
        if rid in seen_rids:
            raise RosterError(f"{at}: router-id {format_router_id(rid)} is also the "
                              f"router-id of {seen_rids[rid]!r}")
        seen_rids[rid] = name
        prefixes = _prefixes(raw_m.get("prefixes", []), f"{at}.prefixes",
                             MAX_PREFIXES_PER_MEMBER)
        groups = _prefixes(raw_m.get("groups", []), f"{at}.groups", MAX_PREFIXES_PER_MEMBER)
        for p in prefixes + groups:
            if not any(p.version == m.version and p.subnet_of(m)  # type: ignore[arg-type]
                       for m in mesh):
                raise RosterError(f"{at}: {p} is outside mesh_prefixes")
        for p in prefixes:
            for q, other in owner:
                if p.version == q.version and p.overlaps(q):
                    raise RosterError(f"{at}.prefixes: {p} overlaps {q} of {other!r} "
                                      "(unicast space has one owner; anycast goes in groups)")
            owner.append((p, name))
        sign_key = None
        if "sign_key" in raw_m:
            try:
                sign_key = base64.b64decode(str(raw_m["sign_key"]), validate=True)
            except (ValueError, binascii.Error):
                sign_key = b""
            if len(sign_key) != 32:
                raise RosterError(f"{at}.sign_key: expected 32 bytes of base64 (wgcast roster "
                                  "sign-key prints a node's)")
            if sign_key in seen_sign:
                raise RosterError(f"{at}.sign_key: also the sign_key of {seen_sign[sign_key]!r}")
            seen_sign[sign_key] = name
        members.append(Member(name, key, prefixes, groups, sign_key, babel_rid))
    signed_by = signature = None
    if "signature" in data:
        sig = data["signature"]
        if not isinstance(sig, dict):
            raise RosterError(f"{where}: signature: expected a table with key and value")
        _only(sig, ("key", "value"), f"{where}: signature")
        try:
            signed_by = base64.b64decode(str(sig.get("key", "")), validate=True)
            signature = base64.b64decode(str(sig.get("value", "")), validate=True)
        except (ValueError, binascii.Error):
            raise RosterError(f"{where}: signature: key and value must be base64") from None
        if len(signed_by) != 32 or len(signature) != 64:
            raise RosterError(f"{where}: signature: expected a 32-byte key and a 64-byte value")
    return Roster(serial, mesh, tuple(members), not_after, signed_by, signature)


def _only(data: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    for k in data:
        if k not in keys:
            raise RosterError(f"{where}: unknown key {k!r} (expected one of {', '.join(keys)})")


def _prefixes(raw: object, where: str, limit: int) -> tuple[Prefix, ...]:
    if not isinstance(raw, list) or len(raw) > limit:
        raise RosterError(f"{where}: expected a list of at most {limit} prefixes")
    out: list[Prefix] = []
    for item in raw:
        try:
            p = ipaddress.ip_network(str(item), strict=True)
        except ValueError as e:
            raise RosterError(f"{where}: {item!r} is not a prefix ({e})") from None
        if p in out:
            raise RosterError(f"{where}: {p} appears twice")
        out.append(p)
    return tuple(out)


# ---------------------------------------------------------------- keys


def generate_mesh_key() -> tuple[bytes, bytes]:
    """(private, public) Ed25519 mesh key, raw 32 bytes each."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes_raw(), key.public_key().public_bytes_raw()


def decode_mesh_key(text: str, what: str = "mesh key") -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise RosterError(f"{what}: expected 32 bytes of base64") from None
    if len(raw) != 32:
        raise RosterError(f"{what}: expected 32 bytes of base64, got {len(raw)} bytes")
    return raw


def accept_newer(current: Roster | None, new: Roster, mesh_public: bytes,
                 now: datetime) -> Roster:
    """The roster to use after `new` arrives: `new` if it is signed by the mesh key, not
    expired and not older than `current`; else RosterError (the current one stays)."""
    new.verify(mesh_public)
    if new.expired(now):
        raise RosterError(f"roster: expired at {new.not_after}")
    if current is not None and new.serial < current.serial:
        raise RosterError(f"roster: serial {new.serial} is older than the serial "
                          f"{current.serial} in use")
    return new
