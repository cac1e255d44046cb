"""`tandem mlflow add-reviewer NAME`: a read-only MLflow account for someone who reviews runs and versions."""

from __future__ import annotations

from tandem import config, mlflow_auth
from tandem.cli import emit


def register(sub) -> None:
    p = sub.add_parser("mlflow", help="MLflow accounts of the stack's tracking server")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    add = verbs.add_parser("add-reviewer", help="create a user who can read every run, trace and model version")
    add.add_argument("name", help="the user name (letters, digits, '.', '-', '_')")
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=run_add_reviewer)


def run_add_reviewer(args) -> int:
    settings = config.load()
    path = mlflow_auth.add_reviewer(settings, args.name)
    emit({"user": args.name, "permission": "READ", "password_file": str(path), "mlflow": settings.mlflow_ui_url},
         args.json,
         f"MLflow user {args.name!r} can read every run and model version at {settings.mlflow_ui_url}.\n"
         f"Its password is in {path} (mode 0600, as NAME:PASSWORD); hand it over and delete the file.")
    return 0
