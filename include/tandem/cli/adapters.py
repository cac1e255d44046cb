"""`tandem adapters list|promote V|rollback|retrain`: the adapter registry from the command line."""

from __future__ import annotations

import sys

from tandem.cli import emit

KEY_METRICS = ("pass_rate", "schema_valid", "citations_valid", "refusal_correct", "answer_correct")


def register(sub) -> None:
    p = sub.add_parser("adapters", help="list, promote, roll back or retrain LoRA adapters (MLflow tandem-adapter)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    ls = verbs.add_parser("list", help="versions with their aliases, key metrics and status")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    pr = verbs.add_parser("promote", help="make VERSION the champion ('base': serve the base model); "
                                          "the old champion becomes 'previous'")
    pr.add_argument("version", metavar="VERSION")
    pr.add_argument("--reason", default="manual promotion", help="recorded as a tag on the version")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_promote)

    rb = verbs.add_parser("rollback", help="put the previous champion back")
    rb.add_argument("--reason", default="manual rollback", help="recorded as a tag on the rolled-back version")
    rb.add_argument("--json", action="store_true")
    rb.set_defaults(func=cmd_rollback)

    rt = verbs.add_parser("retrain", help="run the whole lora_retrain pipeline in this process "
                                          "(dataset, training, three-way eval, registration, gate)")
    rt.add_argument("--set", dest="assignments", action="append", default=[], metavar="NAME=VALUE",
                    help="a retrain parameter (see the lora_retrain trigger form), e.g. --set max_steps=20")
    rt.add_argument("--approve", action="store_true",
                    help="with require_approval=true: approve a candidate that passes the gate")
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(func=cmd_retrain)


def _settings():
    from tandem.config import load

    return load()


def cmd_list(args) -> int:
    from tandem import registry

    rows = registry.list_versions(_settings())
    if args.json:
        emit(rows, True)
        return 0
    if not rows:
        print("no adapter versions yet (the base model serves); train one with the lora_retrain DAG "
              "or `tandem adapters retrain`")
        return 0
    present = {m for r in rows for m in r["metrics"]}
    keys = [m for m in KEY_METRICS if m in present] or sorted(present)[:5]
    header = ["version", "aliases", "status", "gate", "created", *keys]
    table = [header]
    for r in rows:
        table.append([r["version"], ",".join(r["aliases"]) or "-", r["status"], r["gate"] or "-", r["created"],
                      *(f"{r['metrics'][k]:.3f}" if k in r["metrics"] else "-" for k in keys)])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _announce(settings, verb: str, out: dict, as_json: bool) -> None:
    from tandem.airflow import events

    if out.get("changed"):
        problem = events.emit_adapter_event(settings, {"action": verb, "champion": out.get("champion") or "base",
                                                       "previous": out.get("previous") or ""})
        out["asset_event"] = "recorded" if problem is None else f"not recorded: {problem}"
        if problem is not None:
            print(f"warning: the aliases moved, but the behavior_adapter asset event was not recorded: {problem}",
                  file=sys.stderr)
    text = (f"champion: {out.get('champion') or 'base (no adapter)'}; previous: {out.get('previous') or '-'}"
            + ("" if out.get("changed") else " (unchanged)"))
    emit(out, as_json, text)


def cmd_promote(args) -> int:
    from tandem import registry

    settings = _settings()
    out = registry.promote(settings, args.version, reason=args.reason, actor="tandem adapters promote")
    _announce(settings, "promote", out, args.json)
    return 0


def cmd_rollback(args) -> int:
    from tandem import registry

    settings = _settings()
    out = registry.rollback(settings, reason=args.reason, actor="tandem adapters rollback")
    _announce(settings, "rollback", out, args.json)
    return 0


def cmd_retrain(args) -> int:
    from tqdm import tqdm

    from tandem.adapters import params, retrain
    from tandem.serve.pyfunc import log_adapter_model

    values = dict(params.parse_assignment(a) for a in args.assignments)
    params.validate(values)  # bad input: exit 2 before anything loads
    settings = _settings()
    bars: dict = {}

    def on_step(step, total, loss):
        bar = bars.get("train") or bars.setdefault("train", tqdm(total=total, desc="train", unit="step", file=sys.stderr))
        bar.set_postfix(loss=f"{loss:.3f}")
        bar.update(1)

    def progress(name, done, total):
        key = f"eval {name}"
        bar = bars.get(key) or bars.setdefault(key, tqdm(total=total, desc=key, unit="q", file=sys.stderr))
        bar.update(done - bar.n)

    try:
        state = retrain.run_all(settings, values, log_model=log_adapter_model, on_step=on_step, progress=progress,
                                approve=args.approve)
    finally:
        for bar in bars.values():
            bar.close()
    summary = {k: state.get(k) for k in ("run_id", "version", "action", "reason", "promoted", "dataset_digest",
                                         "counts", "training", "evaluation")}
    models = state["evaluation"]["models"]
    lines = [f"version {state['version']}: {state['action']} ({state['reason']})",
             f"training: {state['training']['steps']} steps, {state['training']['s_per_step']} s/step, "
             f"loss {state['training']['first_loss']} -> {state['training']['final_loss']}"]
    for name, scores in models.items():
        lines.append(f"{name:>9}: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(scores.items())
                                               if isinstance(v, (int, float))))
    emit(summary, args.json, "\n".join(lines))
    return 0
