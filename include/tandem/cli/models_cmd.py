"""`tandem models publish | fetch`: the base model's model store (tandem.model_store).

    tandem models publish    log this machine's base model to MLflow (once per sha256) and print the
                             TANDEM_BASE_MODEL_URI / TANDEM_BASE_MODEL_SHA256 every worker should get
    tandem models fetch      on a worker: fetch TANDEM_BASE_MODEL_URI into TANDEM_BASE_MODEL now and verify it
                             (tasks do this on first use; this warms a new worker)
"""

from __future__ import annotations

from tandem.cli import emit


def register(sub) -> None:
    p = sub.add_parser("models", help="publish the base model to MLflow, or fetch it on a worker")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    for name, helptext in (("publish", "log the local base model to MLflow and print the workers' settings"),
                           ("fetch", "fetch and verify the base model from TANDEM_BASE_MODEL_URI")):
        v = verbs.add_parser(name, help=helptext)
        v.add_argument("--json", action="store_true")
        v.set_defaults(func=run)


def run(args) -> int:
    from tandem import model_store, models
    from tandem.config import Settings

    settings = Settings.load()
    if args.verb == "publish":
        store = model_store.publish(settings)
        emit(store, args.json, f"{'published' if store['new'] else 'already published'}: version "
                               f"{store['version']} of {model_store.REGISTERED_MODEL}\n"
                               f"TANDEM_BASE_MODEL_URI={store['uri']}\nTANDEM_BASE_MODEL_SHA256={store['sha256']}")
        return 0
    path = model_store.ensure_base_model(settings)
    result = {"path": path, "sha256": models.base_model_sha256(path)}
    emit(result, args.json, f"base model ready at {path} (sha256 {result['sha256'][:12]})")
    return 0
