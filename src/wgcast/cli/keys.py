"""`wgcast control-address KEY...`: a peer's control address, before any daemon runs.

The wg-quick file of a node lists its peers' control /128s in AllowedIPs
(docs/operations.md); they are derived from the public keys, so the operator can
compute them while writing the file.
"""

from __future__ import annotations

import sys

import click

from wgcast import keys


@click.command("control-address")
@click.argument("public_keys", metavar="PUBLIC_KEY...", nargs=-1)
def control_address(public_keys: tuple[str, ...]) -> None:
    """Print the control link-local address of each WireGuard public key (from stdin
    when none is given, one per line: `wg pubkey < key | wgcast control-address`)."""
    given = public_keys or tuple(line.strip() for line in sys.stdin if line.strip())
    if not given:
        raise click.UsageError("give a public key (44 base64 characters) or pipe one in")
    for text in given:
        try:
            public = keys.decode_key(text)
        except ValueError as e:
            raise click.BadParameter(f"{text!r}: {e}", param_hint="PUBLIC_KEY") from None
        click.echo(str(keys.control_address(public)))
