"""The ``tandem`` command line. Each area registers its own verbs from a module in this package.

Exit codes (docs/architecture.md): 0 success; 1 the job failed (its summary is still printed); 2 the user's input
was wrong. A user's mistake never prints a traceback: it prints what was wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

from tandem.errors import JobFailed, TandemError

# Modules that add verbs: each has ``register(subparsers)``; a missing one is skipped (area not built yet).
AREAS = ("tandem.cli.config_cmd", "tandem.cli.knowledge", "tandem.cli.behavior", "tandem.cli.adapters",
         "tandem.cli.ask", "tandem.cli.serve_cmd", "tandem.cli.models_cmd", "tandem.cli.mlflow_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def emit(obj, as_json: bool, text: str | None = None) -> None:
    """Print a result: JSON for scripts, or the human text."""
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True, default=str))
    elif text is not None:
        print(text)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _sign_in_to_mlflow()
        result = args.func(args)
    except JobFailed as exc:
        if exc.summary:
            emit(exc.summary, getattr(args, "json", False), None)
        print(f"tandem {args.command}: FAILED: {exc}", file=sys.stderr)
        return exc.exit_code
    except TandemError as exc:
        print(f"tandem {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def _sign_in_to_mlflow() -> None:
    """Sign MLflow clients in as Tandem when the stack's MLflow asks for a password (a broken config is
    reported by the command itself)."""
    from tandem import mlflow_auth
    from tandem.config import Settings

    try:
        settings = Settings.load()
    except TandemError:
        return
    mlflow_auth.sign_in(settings)


if __name__ == "__main__":
    sys.exit(main())
