"""`wgcast check -c FILE`: validate configuration files without starting anything."""

from __future__ import annotations

import sys

import click

from wgcast.daemon.config import Config, ConfigError, format_duration, load

#: Exit status when a file is invalid (as for a usage error).
EXIT_INVALID = 2


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def summary(config: Config) -> str:
    """One line about a valid configuration."""
    t = config.timers
    parts = [
        f"interface {config.interface}" if config.interface else
        "LAN-only (no WireGuard)",
        *([_count(len(config.lan), "LAN", "LANs")] if config.lan else []),
        _count(len(config.peers), "peer", "peers"),
        _count(len(config.groups), "group", "groups"),
        _count(len(config.anycast), "anycast prefix", "anycast prefixes"),
        _count(len(config.addresses), "address", "addresses"),
        f"timers {t.profile}: hello {format_duration(t.hello)}, dead {t.dead}, "
        f"update {format_duration(t.update)}",
    ]
    return ", ".join(parts)


@click.command("check")
@click.option(
    "-c",
    "--config",
    "files",
    metavar="FILE",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help="Configuration file to validate (repeat for several).",
)
def check(files: tuple[str, ...]) -> None:
    """Validate configuration files; print every error and exit 2 if one is invalid."""
    failed = False
    for file in files:
        try:
            config = load(file)
        except ConfigError as e:
            failed = True
            for message in e.errors:
                click.echo(message, err=True)
            continue
        click.echo(f"{file}: ok ({summary(config)})")
    if failed:
        sys.exit(EXIT_INVALID)
