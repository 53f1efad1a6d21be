"""What every Elton CLI does the same way: one-line errors and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from mesh.errors import EltonError

EXIT_USAGE = 2


def run(command: click.Command, prog: str, argv: Sequence[str] | None = None) -> int:
    """Run a click command; an EltonError becomes ``prog: message`` on stderr and its exit code."""
    try:
        rv = command.main(args=list(argv) if argv is not None else None, prog_name=prog,
                          standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except EltonError as exc:
        click.echo(f"{prog}: {exc.message}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except BrokenPipeError:
        sys.stderr.close()
        return 141
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"{prog}: {exc.strerror or exc}{where}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
