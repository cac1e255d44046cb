"""`tandem config`: show the resolved settings (or the README table)."""

from __future__ import annotations

from tandem import config
from tandem.cli import emit


def register(sub) -> None:
    p = sub.add_parser("config", help="show the resolved configuration")
    p.add_argument("--markdown", action="store_true", help="print the configuration table for the README")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.markdown:
        print(config.markdown_table())
        return 0
    settings = config.load()
    values = config.shown_values(settings)
    emit(values, args.json, "\n".join(f"{k}={v}" for k, v in values.items()))
    return 0
