"""`wgcast control-address`: the address the daemon derives, computed from the CLI."""

from __future__ import annotations

from click.testing import CliRunner

from wgcast import keys
from wgcast.cli.main import main


def test_control_address_is_the_daemons() -> None:
    pubs = [keys.b64(keys.public_from_private(keys.generate_private())) for _ in range(2)]
    want = [str(keys.control_address(keys.decode_key(p))) for p in pubs]
    by_arg = CliRunner().invoke(main, ["control-address", *pubs])
    assert by_arg.exit_code == 0, by_arg.output
    assert by_arg.output.split() == want
    by_stdin = CliRunner().invoke(main, ["control-address"], input=pubs[0] + "\n")
    assert by_stdin.output.split() == want[:1]


def test_a_bad_key_is_named() -> None:
    r = CliRunner().invoke(main, ["control-address", "abc"])
    assert r.exit_code == 2
    assert "'abc': not a WireGuard key" in r.output
