"""`wgcast install-systemd`: write the `wgcast@.service` template unit shipped with the
package, pointing at the `wgcast` being run (a venv, pipx, or /usr/bin)."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path

import click

UNIT = "wgcast@.service"
#: Directories systemd's ProtectHome= hides from the service.
_HOME_DIRS = ("/home/", "/root/", "/run/user/")


def unit_text(wgcast_bin: str = "/usr/bin/wgcast") -> str:
    """The template unit with ExecStart= on `wgcast_bin`. A binary under a home
    directory (a per-user pipx) gets ProtectHome=read-only, else it could not start."""
    text = resources.files("wgcast.data").joinpath(UNIT).read_text(encoding="utf-8")
    text = text.replace("@WGCAST@", wgcast_bin)
    if wgcast_bin.startswith(_HOME_DIRS):
        text = text.replace("ProtectHome=yes", "ProtectHome=read-only")
    return text


def running_wgcast() -> str:
    """The absolute path of the `wgcast` command running now (argv[0], else PATH)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "wgcast" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    found = shutil.which("wgcast")
    if found:
        return os.path.abspath(found)
    # `python -m wgcast.cli.main`: the console script next to this interpreter.
    return os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "wgcast")


@click.command("install-systemd")
@click.option("--dest", default="/etc/systemd/system", show_default=True,
              type=click.Path(file_okay=False),
              help="Directory to write wgcast@.service into.")
@click.option("--bin", "wgcast_bin", default=None, metavar="PATH",
              help="wgcast executable for ExecStart= (default: the one running now).")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the unit, write nothing.")
def install_systemd(dest: str, wgcast_bin: str | None, to_stdout: bool) -> None:
    """Install the systemd template unit: one `wgcast@IFACE` per WireGuard interface,
    reading /etc/wgcast/IFACE.toml."""
    exe = os.path.abspath(wgcast_bin) if wgcast_bin else running_wgcast()
    text = unit_text(exe)
    if to_stdout:
        click.echo(text, nl=False)
        return
    if not os.access(exe, os.X_OK):
        click.echo(f"warning: {exe} is not executable here; give --bin PATH", err=True)
    path = Path(dest) / UNIT
    try:
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{UNIT}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.chmod(0o644)
            tmp.replace(path)
    except OSError as e:
        click.echo(f"cannot write {path}: {e.strerror or e} (run as root, or give --dest)",
                   err=True)
        sys.exit(1)
    what = "unchanged" if old == text else "updated" if old is not None else "wrote"
    click.echo(f"{what} {path} (ExecStart={exe} run -c /etc/wgcast/%i.toml)")
    if exe.startswith(_HOME_DIRS):
        click.echo("note: wgcast lives under a home directory: the unit uses "
                   "ProtectHome=read-only; a system-wide install (/usr/local/bin, /opt) "
                   "keeps ProtectHome=yes")
    click.echo("next, for the WireGuard interface wg0:\n"
               "  install -d -m 0750 /etc/wgcast\n"
               "  $EDITOR /etc/wgcast/wg0.toml          # interface = \"wg0\" ... "
               "(docs/config.md)\n"
               f"  {exe} check -c /etc/wgcast/wg0.toml\n"
               "  systemctl daemon-reload\n"
               "  systemctl enable --now wgcast@wg0     # after wg-quick@wg0 if you use it\n"
               "  systemctl status wgcast@wg0; journalctl -u wgcast@wg0 -f\n"
               "  systemctl reload wgcast@wg0           # after editing the config (SIGHUP)")
