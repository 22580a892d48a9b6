"""`wgcast roster`: make, sign, check and read the mesh's roster (see wgcast.roster)."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import click

from wgcast.keys import b64
from wgcast.roster import (
    Roster,
    RosterError,
    decode_mesh_key,
    generate_mesh_key,
    parse,
)


def _read(path: str) -> Roster:
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read(), path)
    except OSError as e:
        raise click.ClickException(f"{path}: {e.strerror}") from None
    except RosterError as e:
        raise click.ClickException(str(e)) from None


def _key_text(value: str) -> str:
    """A key given inline (base64) or as a file holding it."""
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read().strip()
    return value


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")


@click.group()
def roster() -> None:
    """The mesh's roster: who may originate which prefixes, signed by the mesh key."""


@roster.command()
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the private mesh key (created 0600, never overwritten).")
def keygen(out: str) -> None:
    """Make a mesh key; prints its public half (the `mesh_key` of every node)."""
    private, public = generate_mesh_key()
    try:
        _write_private(out, b64(private))
    except FileExistsError:
        raise click.ClickException(f"{out}: exists; not overwriting a key") from None
    except OSError as e:
        raise click.ClickException(f"{out}: {e.strerror}") from None
    click.echo(b64(public))


@roster.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-k", "--key", "key", required=True,
              help="The private mesh key: a file (from `roster keygen`) or base64.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="Write the signed roster here (default: in place).")
def sign(path: str, key: str, out: str | None) -> None:
    """Sign PATH with the mesh key (checks it first; raise `serial` for every change)."""
    r = _read(path)
    try:
        private = decode_mesh_key(_key_text(key), "--key")
    except RosterError as e:
        raise click.ClickException(str(e)) from None
    signed = r.signed(private)
    target = out or path
    tmp = f"{target}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(signed.to_toml())
    os.replace(tmp, target)
    click.echo(f"{target}: serial {r.serial}, {len(r.members)} members, signed by "
               f"{b64(signed.signed_by or b'')}")


@roster.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-m", "--mesh-key", "mesh_key", required=True,
              help="The mesh public key (base64, or a file holding it).")
def verify(path: str, mesh_key: str) -> None:
    """Check PATH: well-formed, signed by the mesh key, not expired. Exit 1 if not."""
    r = _read(path)
    try:
        r.verify(decode_mesh_key(_key_text(mesh_key), "--mesh-key"))
    except RosterError as e:
        click.echo(f"{path}: {e}", err=True)
        sys.exit(1)
    if r.expired(datetime.now(UTC)):
        click.echo(f"{path}: expired at {r.not_after}", err=True)
        sys.exit(1)
    click.echo(f"{path}: ok: serial {r.serial}, {len(r.members)} members")


@roster.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def show(path: str, as_json: bool) -> None:
    """Print who may originate what (does not check the signature: see verify)."""
    r = _read(path)
    rows: list[dict[str, Any]] = [
        {"name": m.name, "public_key": b64(m.public_key) if m.public_key else None,
         "router_id": m.router_id.hex(),
         "prefixes": [str(p) for p in m.prefixes], "groups": [str(p) for p in m.groups],
         "sign_key": None if m.sign_key is None else b64(m.sign_key)}
        for m in r.members]
    if as_json:
        click.echo(json.dumps({"serial": r.serial,
                               "mesh_prefixes": [str(p) for p in r.mesh_prefixes],
                               "signed": r.signature is not None, "members": rows}, indent=2))
        return
    click.echo(f"serial {r.serial}, mesh {', '.join(map(str, r.mesh_prefixes))}, "
               f"{'signed' if r.signature else 'NOT signed'}")
    for row in rows:
        click.echo(f"{row['name']:<16} {row['router_id']}  prefixes "
                   f"{', '.join(row['prefixes']) or '-'}  groups {', '.join(row['groups']) or '-'}"
                   f"{'' if row['sign_key'] else '  UNSIGNED (no sign_key)'}"
                   f"{'' if row['public_key'] else '  (not wgcast: by router-id)'}")


@roster.command("sign-key")
@click.argument("private_key", type=click.Path(dir_okay=False, allow_dash=True))
def sign_key(private_key: str) -> None:
    """Print the origin signing key of a node (the `sign_key` of its roster entry), from
    its WireGuard private key: a file, or - for stdin (`wg show wg0 private-key |
    wgcast roster sign-key -`). The key is derived, nothing is stored."""
    from wgcast.keys import InvalidKey, decode_key
    from wgcast.origin import signing_public

    try:
        text = click.open_file(private_key, encoding="utf-8").read()
        raw = decode_key(text)
    except OSError as e:
        raise click.ClickException(f"{private_key}: {e.strerror}") from None
    except InvalidKey as e:
        raise click.ClickException(f"{private_key}: {e}") from None
    click.echo(b64(signing_public(raw)))
