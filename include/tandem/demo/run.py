"""``make demo``: the whole story on real DAG runs, driven through Airflow's REST API.

    python -m tandem.demo.run [--reset] [--fast]

1. ``knowledge_reindex`` indexes release 1 of the Acme Beacon docs.
2. ``behavior_eval`` scores the base model; behavior is at fault, so it triggers ``lora_retrain`` itself.
3. ``lora_retrain`` trains, evaluates, registers adapter v1 and promotes it to champion.
4. ``behavior_eval`` re-runs on the new champion (triggered by the ``behavior_adapter`` asset).
5. Release 2 is applied to the source folder and ``knowledge_reindex`` runs: only changed docs re-embed.
6. ``tandem ask`` asks about a fact release 2 changed, and answers with the new value.
7. Where to look: Airflow grids, MLflow experiments and registry, the Tandem status page.

The demo owns ``$TANDEM_HOME/demo/`` (its source folder and a state file). A second run continues an
unfinished demo from its next step, or resets a finished one (``--reset`` forces a reset); it says which.
``--fast`` is the CI variant: a slice of the eval set and a few training steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tandem.airflow.rest import AirflowClient, DagRun
from tandem.config import Settings
from tandem.demo import data
from tandem.errors import TandemError

STEPS = ("reindex_release1", "eval_base", "retrain", "eval_champion", "reindex_release2", "ask")


class Demo:
    def __init__(self, settings: Settings, *, fast: bool = False, out=print):
        self.settings = settings
        self.fast = fast
        self.say = out
        self.dir = settings.home / "demo"
        self.source = self.dir / data.SOURCE_NAME
        self.state_path = self.dir / "state.json"
        self.state: dict[str, Any] = self._load_state()
        self.client: AirflowClient | None = None
        self.timings: dict[str, float] = {}
        self.outcomes: dict[str, Any] = {}

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

        return client.wait(run, on_progress=progress, timeout=3600)

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

    def eval_base(self) -> dict:
        client = self._client()
        before = {r.run_id for r in client.runs("lora_retrain")}
        conf = {"limit": 16} if self.fast else {}
        run = self._run_dag("behavior_eval", conf)
        decision = client.xcom("behavior_eval", run.run_id, "decide") or {}
        self.say(f"    decision: {json.dumps(decision)[:400]}")
        self.state["runs"]["eval_base"] = run.run_id
        self.state["lora_before"] = sorted(before)
        return {"decision": decision.get("action") or decision.get("decision"), "run_id": run.run_id}

    def retrain(self) -> dict:
        client = self._client()
        triggered = client.wait_for_new_run("lora_retrain", set(self.state.get("lora_before", [])), timeout=300)
        self.say(f"    behavior_eval triggered lora_retrain run {triggered.run_id} (conf: "
                 f"{json.dumps(triggered.conf)[:200]})")
        before_eval = {r.run_id for r in client.runs("behavior_eval")}
        self.state["eval_before"] = sorted(before_eval)
        self._run_dag("lora_retrain", run=triggered)
        from tandem.adapters import registry

        champion = registry.resolve(self.settings, "champion")
        self.say(f"    registered and promoted: tandem-adapter version {champion.version} is champion")
        return {"champion": champion.version}

    def eval_champion(self) -> dict:
        client = self._client()
        run = client.wait_for_new_run("behavior_eval", set(self.state.get("eval_before", [])), timeout=300)
        self.say(f"    the behavior_adapter asset triggered behavior_eval run {run.run_id}")
        run = self._run_dag("behavior_eval", run=run)
        decision = client.xcom("behavior_eval", run.run_id, "decide") or {}
        self.say(f"    decision: {json.dumps(decision)[:400]}")
        return {"decision": decision.get("action") or decision.get("decision"), "run_id": run.run_id}

    def ask(self) -> dict:
        from tandem.serve.answer import answer

        question = data.read_jsonl(data.RELEASE2_QUESTIONS_PATH)[0]
        result = answer(self.settings, question["question"], k=5).to_dict()
        self.say(f"    Q: {question['question']}")
        self.say(f"    A: {json.dumps(result.get('answer'))}  (adapter {result.get('adapter')})")
        self.say(f"    citations: {result.get('citations')}")
        new_ok = all(f.lower() in json.dumps(result).lower() for f in question["gold_facts"])
        self.say(f"    new value {question['gold_facts']} present: {new_ok}; old value {question['old_facts']}")
        return {"question": question["question"], "answer": result, "new_fact_present": new_ok}

    def where_to_look(self) -> None:
        s = self.settings
        self.say("\n== 7. Where to look")
        for dag_id in ("knowledge_reindex", "behavior_eval", "lora_retrain"):
            self.say(f"   Airflow grid   {s.airflow_url}/dags/{dag_id}/grid")
        self.say(f"   MLflow         {s.mlflow_ui_url}/#/experiments  (tandem-knowledge, tandem-behavior-eval, "
                 "tandem-lora-training)")
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
        }
        for name in todo:
            self._step(name, actions[name])
        self.where_to_look()
        report = {"timings_s": self.timings, "outcomes": self.outcomes,
                  "total_s": round(sum(self.timings.values()), 1)}
        self.say(f"\nDemo finished in {report['total_s']:.0f}s: " + json.dumps(self.timings))
        return report


def clear_aliases(settings: Settings) -> None:
    """Take the demo's registered model back to 'no champion' (base only). Versions and runs are kept."""
    from mlflow.exceptions import MlflowException

    from tandem.adapters import registry
    from tandem.tracking import ALIAS_CHALLENGER, ALIAS_CHAMPION, ALIAS_PREVIOUS, REGISTERED_MODEL

    cl = registry.client(settings)
    for alias in (ALIAS_CHAMPION, ALIAS_CHALLENGER, ALIAS_PREVIOUS):
        try:
            cl.delete_registered_model_alias(REGISTERED_MODEL, alias)
        except MlflowException:
            pass  # no such model or alias yet
    try:
        registry._set_history(cl, [])
    except MlflowException:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.demo.run", description=__doc__.splitlines()[0])
    parser.add_argument("--reset", action="store_true", help="start over even if an unfinished demo exists")
    parser.add_argument("--fast", action="store_true", help="CI variant: eval slice, few training steps")
    parser.add_argument("--report", type=Path, help="write the timings and outcomes as JSON here")
    args = parser.parse_args(argv)
    try:
        from tandem.stack.cli import up

        settings = Settings.load()
        up(settings)
        report = Demo(settings, fast=args.fast, out=lambda m: print(m, flush=True)).run(reset=args.reset)
    except TandemError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.report:
        args.report.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
