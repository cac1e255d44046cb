"""The demo's live traffic: questions sent through ``tandem serve``, and step 7, where the traffic eval finds a drop.

Step 6 sends every release-2 question through ``tandem serve`` (``ask_serve``) while adapter v1 is champion;
each answer is an MLflow trace in ``tandem-serving``, tagged with the adapter that gave it. Step 7
(``TrafficStep``):

1. reads v1's traffic back and prints the rates the traffic eval scores (``tandem.behavior.traffic``);
2. serves the base model (the registry's ``promote base``) and waits until ``tandem serve`` re-reads the alias
   (``champion_check_seconds``);
3. sends the same questions again: the base model answers them outside the contract;
4. waits for the base model's traces, then triggers ``behavior_eval`` with ``source: traffic``: it samples them,
   diagnoses behavior, and triggers ``lora_retrain``;
5. reports the triggered ``lora_retrain`` run. The demo does not wait for it: it trains the next version, and
   the gate decides whether it replaces the base model as champion.

The alias moves without the ``behavior_adapter`` asset event that ``tandem adapters promote`` records: that
event starts an eval-set run of ``behavior_eval``, and this step shows the traffic alone finding the drop.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from tandem.config import Settings
from tandem.errors import JobFailed

TRACE_WAIT_S = 120  # the serve process exports traces in the background: how long the demo waits for them
ANSWER_TIMEOUT_S = 900  # one answer through serve, queueing behind the others included


def ask_serve(settings: Settings, questions: list[str], say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Send ``questions`` to ``tandem serve``'s answer API at once (it batches them); the answers, in order."""
    import httpx

    from tandem.stack.services import serve_env

    env = serve_env(settings)
    url = env["TANDEM_SERVE_URL"].rstrip("/") + "/api/ask"
    headers = {"Authorization": f"Bearer {env['TANDEM_SERVE_TOKEN']}"}
    started = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(ANSWER_TIMEOUT_S, connect=5.0), headers=headers) as client:
        def one(question: str) -> dict[str, Any]:
            resp = client.post(url, json={"question": question})
            if resp.status_code != 200:
                raise JobFailed(f"tandem serve answered {resp.status_code} to {question!r}: {resp.text[:300]}",
                                fix="read the serve log: make logs (tandem-serve)")
            return resp.json()

        workers = min(len(questions), settings.serve_batch_max) or 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            answers = list(pool.map(one, questions))
    elapsed = time.monotonic() - started
    by_adapter: dict[str, int] = {}
    for a in answers:
        by_adapter[a["adapter"]] = by_adapter.get(a["adapter"], 0) + 1
    say(f"    {len(answers)} question(s) through tandem serve ({url}) in {elapsed:.0f}s "
        f"({len(answers) / max(elapsed, 1e-9):.2f}/s); answered by " +
        ", ".join(f"{k} ({v})" for k, v in sorted(by_adapter.items())))
    return answers


def trace_link(settings: Settings, trace_id: str) -> str:
    """Where to open one answer's trace in the MLflow UI."""
    from tandem import tracking

    exp = tracking.client(settings).get_experiment_by_name(settings.trace_experiment)
    return tracking.trace_url(settings, exp.experiment_id, trace_id) if exp is not None else trace_id


def wait_for_traces(settings: Settings, adapter: str, trace_ids: set[str], since: dt.datetime,
                    timeout: float = TRACE_WAIT_S) -> list:
    """The traffic rows of ``adapter`` since ``since``, once every trace in ``trace_ids`` is among them."""
    from tandem.behavior import traffic

    deadline = time.monotonic() + timeout
    while True:
        rows = traffic.fetch(settings, adapter, since=since)
        missing = trace_ids - {r.trace_id for r in rows}
        if not missing:
            return rows
        if time.monotonic() > deadline:
            raise JobFailed(f"{len(missing)} of {len(trace_ids)} answer trace(s) of adapter {adapter} did not reach "
                            f"MLflow within {timeout:.0f}s",
                            fix="check /health's `tracing` section of tandem serve (dropped traces) and MLflow")
        time.sleep(2)


class TrafficStep:
    """Step 7 (see the module doc). ``demo`` is the running ``tandem.demo.run.Demo``."""

    def __init__(self, demo):
        self.demo = demo
        self.settings: Settings = demo.settings
        self.say = demo.say

    def rates(self, adapter: str, rows: list) -> dict[str, Any]:
        from tandem.behavior import traffic

        metrics, counts = traffic.score(rows)
        self.say(f"    {traffic.trace_label(adapter)} on traffic: {len(rows)} trace(s); " +
                 ", ".join(f"{k} {v:.2f}" for k, v in sorted(metrics.items())))
        return {"n": len(rows), "metrics": metrics, "counts": counts}

    def run(self) -> dict[str, Any]:
        from tandem import registry

        demo, settings = self.demo, self.settings
        sent = demo.state.get("traffic") or {}
        if not sent.get("questions"):
            raise JobFailed("step 6 recorded no questions sent through tandem serve",
                            fix="run the demo again with --reset")
        since = dt.datetime.fromisoformat(sent["since"])
        champion = registry.version_number(sent["adapter"]) or "base"  # the answers say "v1"
        before = self.rates(champion, wait_for_traces(settings, champion, set(sent["trace_ids"]), since))
        if sent["trace_ids"]:
            self.say(f"    one of its answers in MLflow: {trace_link(settings, sent['trace_ids'][0])}")

        out = registry.promote(settings, "base", reason="make demo: the base model serves, to show the traffic eval",
                               actor="make demo")
        self.say(f"    promoted base: champion {out.get('champion') or 'base (no adapter)'}, previous "
                 f"{out.get('previous') or '-'}; tandem serve re-reads the alias within "
                 f"{settings.champion_check_seconds} s")
        time.sleep(settings.champion_check_seconds + 1)
        base_since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        answers = ask_serve(settings, sent["questions"], self.say)
        stale = [a["adapter"] for a in answers if a["adapter"] != "base"]
        if stale:
            raise JobFailed(f"{len(stale)} answer(s) after `promote base` came from {sorted(set(stale))}",
                            fix="tandem serve did not re-read the champion alias; see its log (make logs)")
        ids = {a["trace_id"] for a in answers if a.get("trace_id")}
        after = self.rates("base", wait_for_traces(settings, "base", ids, base_since))

        client = demo._client()
        lora_before = {r.run_id for r in client.runs("lora_retrain")}
        run = demo._run_dag("behavior_eval", {"source": "traffic"})
        demo.state["runs"]["eval_traffic"] = run.run_id
        outcome = self.outcome(run)
        triggered = None
        if outcome["decision"] == "retrain":
            new = client.wait_for_new_run("lora_retrain", lora_before, timeout=300)
            triggered = {"run_id": new.run_id, "conf": new.conf}
            self.say(f"    the traffic eval triggered lora_retrain run {new.run_id} (conf: {json.dumps(new.conf)[:200]})")
            self.say(f"    it trains the next adapter version now: {settings.airflow_url}/dags/lora_retrain "
                     "(the gate decides whether it replaces the base model as champion)")
        return {"before": {"adapter": sent["adapter"], **before}, "after": {"adapter": "base", **after}, **outcome,
                "lora_retrain": triggered}

    def outcome(self, run) -> dict[str, Any]:
        client = self.demo._client()
        decision = client.xcom("behavior_eval", run.run_id, "decide") or {
            key: client.xcom("behavior_eval", run.run_id, "decide", key=key) for key in ("action", "kind", "reason")}
        summary = client.xcom("behavior_eval", run.run_id, "evaluate_traffic") or {}
        self.say(f"    traffic eval of adapter {summary.get('adapter')}: {summary.get('n')} of "
                 f"{summary.get('n_in_window')} trace(s) in the last {summary.get('window_hours')} h; classes "
                 f"{json.dumps(summary.get('counts') or {})}")
        self.say(f"    decision: {decision.get('action')} ({decision.get('kind')}): "
                 f"{(decision.get('reason') or '')[:300]}")
        if summary.get("run_url"):
            self.say(f"    MLflow run: {summary['run_url']}")
        return {"decision": decision.get("action"), "kind": decision.get("kind"), "run_id": run.run_id,
                "adapter": summary.get("adapter"), "n": summary.get("n"), "n_in_window": summary.get("n_in_window"),
                "metrics": summary.get("metrics") or {}, "counts": summary.get("counts"),
                "eval_run_id": summary.get("run_id")}
