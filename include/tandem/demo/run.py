"""``make demo``: the whole story on real DAG runs, driven through Airflow's REST API.

    python -m tandem.demo.run [--reset] [--fast]

1. ``knowledge_reindex`` indexes release 1 of the Acme Beacon docs.
2. ``behavior_eval`` scores the base model; behavior is at fault, so it triggers ``lora_retrain`` itself.
3. ``lora_retrain`` trains, evaluates, registers adapter v1 and promotes it to champion.
4. ``behavior_eval`` re-runs on the new champion (triggered by the ``behavior_adapter`` asset).
5. Release 2 is applied to the source folder and ``knowledge_reindex`` runs: only changed docs re-embed.
6. ``tandem ask`` asks about a fact release 2 changed, and answers with the new value; then every release-2
   question goes through ``tandem serve`` (each answer an MLflow trace), and the demo counts the answers that
   give the new value and not the old one (the knowledge cadence's end-to-end measure: the index has the
   fact, does the model use it?).
7. Live traffic (``tandem.demo.traffic``): the base model serves (``promote base``), the same questions go
   through ``tandem serve`` again, and ``behavior_eval`` on ``source: traffic`` finds the behavior drop in the
   answers users got and triggers ``lora_retrain``.
8. Where to look: Airflow grids, MLflow experiments, traces and registry, the Tandem status page.

The demo owns ``$TANDEM_HOME/demo/`` (its source folder and a state file). A second run continues an
unfinished demo from its next step, or resets a finished one (``--reset`` forces a reset); it says which.
``--fast`` is the CI variant (``tandem.demo.fast``): slices of the eval and training sets and a few training
steps, handed to a stack the demo starts itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tandem import tracking
from tandem.airflow.rest import AirflowClient, DagRun
from tandem.config import Settings
from tandem.demo import data, fast
from tandem.demo.traffic import TrafficStep, ask_serve
from tandem.errors import JobFailed, TandemError, UserError

# The release-2 question step 6 asks: the per-file limit of incident attachments, 25 MB in release 1, 50 MB in
# release 2. Chosen by measurement: after the demo's 80 steps the 135M model's adapter gives the new value for
# 7 of the 15 release-2 questions (r001, r003, r009, r011, r012, r013, r015; step 6 asks them all and prints
# each answer), and cites the changed document for 14. The fast variant's adapter (20 steps) answers others:
# see tandem.demo.fast.ASK_QUESTION.
ASK_QUESTION = "r009"

STEPS = ("reindex_release1", "eval_base", "retrain", "eval_champion", "reindex_release2", "ask", "traffic")


class Demo:
    def __init__(self, settings: Settings, *, question: str = ASK_QUESTION, out=print):
        self.settings = settings
        questions = {q["id"]: q for q in data.read_jsonl(data.RELEASE2_QUESTIONS_PATH)}
        if question not in questions:  # checked before any step runs, not 15 minutes in
            raise UserError(f"unknown release-2 question {question!r}",
                            fix=f"use one of: {', '.join(sorted(questions))} ({data.RELEASE2_QUESTIONS_PATH})")
        self.question = questions[question]
        self.say = out
        self.dir = settings.home / "demo"
        self.source = self.dir / data.SOURCE_NAME
        self.state_path = self.dir / "state.json"
        self.state: dict[str, Any] = self._load_state()
        self.client: AirflowClient | None = None
        self.timings: dict[str, float] = {}
        self.outcomes: dict[str, Any] = {}
        self.hosts: dict[str, dict[str, str]] = {}

    # --- state: which steps are done, so a re-run can continue or reset
    def _load_state(self) -> dict:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"done": [], "runs": {}}

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(self.state, indent=2, sort_keys=True))

    def plan(self, reset: bool) -> list[str]:
        done = self.state.get("done", [])
        if reset or len(done) == len(STEPS) or not done:
            if done:
                self.say(f"Resetting the demo state it owns ({'asked' if reset else 'the last demo finished'}): "
                         "release 1 in the source folder, the champion alias cleared (versions are kept).")
                self._reset()
            else:
                self.say("Starting the demo from the beginning.")
            return list(STEPS)
        todo = [s for s in STEPS if s not in done]
        self.say(f"Continuing an unfinished demo: {len(done)} step(s) done, next is {todo[0]}.")
        return todo

    def _reset(self) -> None:
        clear_aliases(self.settings)
        data.materialise_release1(self.source, force=True)
        self.state = {"done": [], "runs": {}}
        self._save()

    # --- helpers
    def _client(self) -> AirflowClient:
        if self.client is None:
            from tandem.stack.services import airflow_password

            self.client = AirflowClient(self.settings.airflow_url, "admin", airflow_password(self.settings))
        return self.client

    def _run_dag(self, dag_id: str, conf: dict | None = None, run: DagRun | None = None) -> DagRun:
        client = self._client()
        client.wait_for_dag(dag_id)
        if run is None:
            run = client.trigger(dag_id, conf)
            self.say(f"    triggered {dag_id} run {run.run_id}")
        seen: dict[str, str] = {}

        def progress(current: DagRun, tis: list) -> None:
            for ti in tis:
                key = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
                if ti.get("state") and seen.get(key) != ti["state"] and ti["state"] in ("running", "success", "failed"):
                    seen[key] = ti["state"]
                    self.say(f"      {key}: {ti['state']}")

        done = client.wait(run, on_progress=progress, timeout=3600)
        self._record_hosts(done)
        return done

    def _record_hosts(self, run: DagRun) -> None:
        """Which host (or Celery worker, TANDEM_EXECUTOR=celery) ran each task of a run: kept in the report."""
        ran = {}
        for ti in self._client().task_instances(run.dag_id, run.run_id):
            if ti.get("hostname"):
                key = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
                ran[key] = ti["hostname"]
        self.hosts[f"{run.dag_id}/{run.run_id}"] = ran
        counts: dict[str, int] = {}
        for host in ran.values():
            counts[host] = counts.get(host, 0) + 1
        if len(counts) > 1:
            self.say("    ran on: " + ", ".join(f"{h} ({n} task(s))" for h, n in sorted(counts.items())))

    def _step(self, name: str, fn: Callable[[], Any]) -> None:
        self.say(f"\n== {STEPS.index(name) + 1}. {name}")
        started = time.monotonic()
        result = fn()
        self.timings[name] = round(time.monotonic() - started, 1)
        self.outcomes[name] = result
        self.state.setdefault("done", []).append(name)
        self._save()
        self.say(f"   done in {self.timings[name]:.0f}s")

    # --- the steps
    def reindex(self, release: int) -> dict:
        if release == 1:
            if data.detect_release(self.source) != 1:
                data.materialise_release1(self.source, force=True)
        else:
            changed = data.apply_release2(self.source)
            self.say(f"    applied release 2 to {self.source}: {json.dumps(changed.get('doc_ids', changed))}")
        conf = {"sources": [f"{data.SOURCE_NAME}={self.source}"]}
        run = self._run_dag("knowledge_reindex", conf)
        summary = self._client().xcom("knowledge_reindex", run.run_id, "finalize") or {}
        self.state["runs"][f"reindex_release{release}"] = run.run_id
        keys = ("new", "changed", "unchanged", "deleted", "failed", "chunks_embedded", "index_version")
        self.say("    " + ", ".join(f"{k}={summary.get(k)}" for k in keys))
        return {k: summary.get(k) for k in keys}

    def _eval_outcome(self, run: DagRun) -> dict:
        client = self._client()
        decision = client.xcom("behavior_eval", run.run_id, "decide") or {
            key: client.xcom("behavior_eval", run.run_id, "decide", key=key) for key in ("action", "kind", "reason")}
        summary = client.xcom("behavior_eval", run.run_id, "evaluate") or {}
        metrics = summary.get("metrics") or {}
        shown = ", ".join(f"{k} {metrics[k]:.2f}" for k in ("json_valid", "schema_valid", "citations_valid",
                                                              "grounded", "answer_correct", "pass_rate")
                          if isinstance(metrics.get(k), (int, float)))
        self.say(f"    {summary.get('n')} examples in {summary.get('wall_s')}s: {shown}")
        self.say(f"    diagnosis: {json.dumps(summary.get('counts') or {})}")
        self.say(f"    decision: {decision.get('action')} ({decision.get('kind')}): {(decision.get('reason') or '')[:300]}")
        if summary.get("run_url"):
            self.say(f"    MLflow run: {summary['run_url']}")
        return {"decision": decision.get("action"), "kind": decision.get("kind"), "run_id": run.run_id,
                "adapter": summary.get("adapter"), "n": summary.get("n"), "metrics": metrics,
                "counts": summary.get("counts")}

    def eval_base(self) -> dict:
        client = self._client()
        before = {r.run_id for r in client.runs("lora_retrain")}
        run = self._run_dag("behavior_eval", {})
        self.state["runs"]["eval_base"] = run.run_id
        self.state["lora_before"] = sorted(before)
        return self._eval_outcome(run)

    def retrain(self) -> dict:
        client = self._client()
        triggered = client.wait_for_new_run("lora_retrain", set(self.state.get("lora_before", [])), timeout=300)
        self.say(f"    behavior_eval triggered lora_retrain run {triggered.run_id} (conf: "
                 f"{json.dumps(triggered.conf)[:200]})")
        before_eval = {r.run_id for r in client.runs("behavior_eval")}
        self.state["eval_before"] = sorted(before_eval)
        run = self._run_dag("lora_retrain", run=triggered)
        from tandem import registry

        listed = registry.list_versions(self.settings)
        newest = max(listed, key=lambda v: int(v["version"])) if listed else None
        if newest is None:
            raise JobFailed(f"lora_retrain run {run.run_id} registered no adapter version",
                            fix=f"open the run's task logs: {self.settings.airflow_url}/dags/lora_retrain/runs")
        aliases = sorted(newest.get("aliases") or [])
        self.say(f"    registered tandem-adapter version {newest['version']} (aliases: {', '.join(aliases) or 'none'})")
        metrics = {k: newest.get("metrics", {}).get(k) for k in ("schema_valid", "citations_valid", "pass_rate")}
        self.say(f"    holdout metrics: {json.dumps(metrics)}")
        training = self._training_figures(newest)
        if training:
            self.say("    training: " + ", ".join(f"{k} {v}" for k, v in training["training"].items()))
            for model, values in training["content"].items():
                self.say(f"    holdout content, {model}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
        metrics["training"] = training
        if "champion" not in aliases:
            raise JobFailed(f"adapter version {newest['version']} did not pass the promotion gate: "
                            f"{newest.get('gate_reason') or 'see the version tags in MLflow'}",
                            fix="the demo needs a promoted adapter; check the lora_retrain run in MLflow "
                                "(tandem-lora-training) and the spec's thresholds")
        self.say(f"    promoted: version {newest['version']} is the champion")
        return {"version": str(newest["version"]), "aliases": aliases, "metrics": metrics}

    def _training_figures(self, version: dict) -> dict:
        """Steps, s/step and the holdout content metrics of the version's training run (from MLflow)."""

        run_id = (version.get("tags") or {}).get("tandem.training_run_id") or version.get("run_id")
        if not run_id:
            return {}
        data = tracking.client(self.settings).get_run(run_id).data
        m = data.metrics
        training = {k: round(m[k], 3) for k in ("steps", "s_per_step", "tokens_per_row", "train_seconds",
                                                  "dataset_counterfactual_share") if k in m}
        content = {model: {k: round(m[f"{model}.{k}"], 3) for k in ("answer_correct", "no_false_refusal", "faithful",
                                                                     "schema_valid", "citations_valid")
                           if f"{model}.{k}" in m} for model in ("candidate", "champion", "base")}
        seconds = {model: round(m[f"{model}.eval_generation_s"], 1) for model in ("candidate", "champion", "base")
                   if f"{model}.eval_generation_s" in m}
        return {"training": training, "content": {k: v for k, v in content.items() if v},
                "eval_generation_s": seconds, "base_scores_from": data.tags.get("tandem.base_scores_from")}

    def eval_champion(self) -> dict:
        client = self._client()
        run = client.wait_for_new_run("behavior_eval", set(self.state.get("eval_before", [])), timeout=300)
        self.say(f"    the behavior_adapter asset triggered behavior_eval run {run.run_id}")
        run = self._run_dag("behavior_eval", run=run)
        return self._eval_outcome(run)

    def ask(self) -> dict:
        import os
        import subprocess

        question = self.question
        self.say(f"    $ tandem ask {json.dumps(question['question'])} --json")
        tandem = Path(sys.executable).parent / "tandem"
        proc = subprocess.run([str(tandem), "ask", question["question"], "--json"], capture_output=True, text=True,
                              env={**os.environ, **self.settings.as_env()}, timeout=900)
        if proc.returncode != 0:
            raise JobFailed(f"tandem ask failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}",
                            fix="run the same `tandem ask` by hand to see the full message")
        result = json.loads(proc.stdout)
        self.say(f"    A: {json.dumps(result.get('answer'))}")
        self.say(f"    citations: {result.get('citations')}  (adapter {result.get('adapter')}, confidence "
                 f"{result.get('confidence')}, contract {'met' if result.get('valid') else 'broken'})")
        text = json.dumps(result.get("answer", "")).lower()
        new_ok = all(f.lower() in text for f in question["gold_facts"])
        old_present = any(f.lower() in text for f in question["old_facts"])
        cited = [d for d in question["gold_doc_ids"] if d in (result.get("citations") or [])]
        self.say(f"    new value {question['gold_facts']} in the answer: {new_ok}; old value "
                 f"{question['old_facts']} in it: {old_present}; cites the changed document: {bool(cited)}")
        check = self.release2_check()
        return {"question": question["question"], "answer": result.get("answer"),
                "citations": result.get("citations"), "valid": result.get("valid"), "adapter": result.get("adapter"),
                "new_fact_present": new_ok, "old_fact_present": old_present, "cites_changed_doc": bool(cited),
                "release2": check}

    def release2_check(self) -> dict:
        """Every release-2 question through ``tandem serve`` at once (it batches them): how many get the new
        value? The answers are live traffic too: step 7 reads their traces back."""
        import datetime as dt

        from tandem.serve.answer import load_spec

        questions = [q for q in data.read_jsonl(data.RELEASE2_QUESTIONS_PATH) if q["answerable"]]
        refusal = load_spec(self.settings).style.refusal_text
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        answers = ask_serve(self.settings, [q["question"] for q in questions], self.say)
        rows = [release2_verdict(q, a, refusal) for q, a in zip(questions, answers)]
        self.state["traffic"] = {"questions": [q["question"] for q in questions], "since": since.isoformat(),
                                 "adapter": answers[0]["adapter"] if answers else "base",
                                 "trace_ids": sorted(a["trace_id"] for a in answers if a.get("trace_id"))}
        summary = {key: sum(1 for r in rows if r[key]) for key in
                   ("new_value", "new_without_old", "old_value", "refused", "cites_changed_doc", "valid",
                    "ungrounded")}
        self.say(f"    release-2 questions answered with the new value and without the old one: "
                 f"{summary['new_without_old']} of {len(rows)} (old value given: {summary['old_value']}; refused: "
                 f"{summary['refused']}; cite the changed document: {summary['cites_changed_doc']}; flagged "
                 f"ungrounded: {summary['ungrounded']})")
        for r in rows:
            mark = "ok " if r["new_without_old"] else ("OLD" if r["old_value"] else "-- ")
            self.say(f"      {mark} {r['id']}: {json.dumps(r['answer'])[:110]}")
        return {"n": len(rows), **summary, "rows": rows}

    def where_to_look(self) -> None:
        s = self.settings
        self.say(f"\n== {len(STEPS) + 1}. Where to look")
        for dag_id in ("knowledge_reindex", "behavior_eval", "lora_retrain"):
            self.say(f"   Airflow grid   {s.airflow_url}/dags/{dag_id}")
        self.say(f"   MLflow         {s.mlflow_ui_url}/#/experiments  (tandem-knowledge, tandem-behavior-eval, "
                 f"tandem-lora-training; the answer traces in {s.trace_experiment})")
        self.say(f"   Registry       {s.mlflow_ui_url}/#/models/tandem-adapter  (aliases champion / previous)")
        self.say(f"   Tandem page    {s.airflow_url}/tandem/")

    def run(self, reset: bool = False) -> dict:
        todo = self.plan(reset)
        actions = {
            "reindex_release1": lambda: self.reindex(1),
            "eval_base": self.eval_base,
            "retrain": self.retrain,
            "eval_champion": self.eval_champion,
            "reindex_release2": lambda: self.reindex(2),
            "ask": self.ask,
            "traffic": TrafficStep(self).run,
        }
        for name in todo:
            self._step(name, actions[name])
        self.where_to_look()
        report = {"timings_s": self.timings, "outcomes": self.outcomes, "hosts": self.hosts,
                  "total_s": round(sum(self.timings.values()), 1)}
        self.say(f"\nDemo finished in {report['total_s']:.0f}s: " + json.dumps(self.timings))
        return report


def release2_verdict(question: dict, result: dict, refusal_text: str) -> dict:
    """Did an answer (``Answer.to_dict()``) to a release-2 question give the new value, or the old one?"""
    from tandem.behavior.scoring import is_refusal
    from tandem.behavior.text import contains

    text = str(result.get("answer") or "")
    new = all(contains(text, f) for f in question["gold_facts"])
    old = any(contains(text, f) for f in question["old_facts"])
    return {"id": question["id"], "answer": text, "new_value": new, "old_value": old, "new_without_old": new and not old,
            "refused": bool(result.get("refused")) or is_refusal(text, refusal_text),
            "cites_changed_doc": any(d in (result.get("citations") or []) for d in question["gold_doc_ids"]),
            "valid": bool(result.get("valid")),
            "ungrounded": any(str(v).startswith("ungrounded") for v in result.get("violations") or [])}


def clear_aliases(settings: Settings) -> None:
    """Take the demo's registered model back to 'no champion' (base only). Versions and runs are kept."""
    from tandem import registry

    registry.reset_aliases(settings)


def _fast_settings(settings: Settings) -> Settings:
    """Point this process and the stack it starts at the fast variant's slices (``tandem.demo.fast``)."""
    import os

    from tandem.stack import process, services

    if any(process.running_pid(svc, settings.run_dir) for svc in services.all_services(settings)):
        raise UserError("--fast needs a stack started with its slices, and one is already running",
                        fix="stop it first (`make down`), or run the full demo without --fast")
    os.environ.update(fast.prepare(settings.home / "demo" / "fast"))
    return Settings.load()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.demo.run", description=__doc__.splitlines()[0])
    parser.add_argument("--reset", action="store_true", help="start over even if an unfinished demo exists")
    parser.add_argument("--fast", action="store_true", help="CI variant: eval slice, few training steps")
    parser.add_argument("--report", type=Path, help="write the timings and outcomes as JSON here")
    parser.add_argument("--question", default=None, metavar="ID",
                        help=f"the release-2 question step 6 asks (default {ASK_QUESTION}, with --fast "
                             f"{fast.ASK_QUESTION}; ids in release2_questions.jsonl)")
    args = parser.parse_args(argv)
    try:
        from tandem.stack.cli import up

        settings = Settings.load()
        if args.fast:
            settings = _fast_settings(settings)
        up(settings)
        question = args.question or (fast.ASK_QUESTION if args.fast else ASK_QUESTION)
        report = Demo(settings, question=question,
                      out=lambda m: print(m, flush=True)).run(reset=args.reset)
    except TandemError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.report:
        args.report.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
