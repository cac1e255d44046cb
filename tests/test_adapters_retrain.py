"""The retrain pipeline end to end on real parts: a tiny indexed KB (real pgvector index), real LoRA training
of SmolLM2 for a few steps, the behavior_eval scorers, the real MLflow server and registry.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from adapters_fixtures import adapters_settings, register_adapter  # noqa: F401 - fixtures
from tandem.serve.pyfunc import log_adapter_model

pytestmark = pytest.mark.slow

VALUES = {"max_steps": 3, "batch_size": 1, "max_seq_len": 640, "lora_r": 4, "lora_alpha": 8, "distractors": 1,
          "holdout_fraction": 0.25, "learning_rate": 1e-3, "reason": "test retrain", "eval_run_id": "evalrun123"}


def _clean(settings):
    from mlflow.exceptions import MlflowException

    from tandem import registry

    try:
        registry.client(settings).delete_registered_model(registry.MODEL)
    except MlflowException:
        pass


@pytest.fixture(scope="module")
def first_run(adapters_settings):
    import torch

    from tandem.adapters import retrain

    torch.set_num_threads(1)  # 2 threads on a shared 2-core box spin and crawl
    _clean(adapters_settings)
    state = retrain.run_all(adapters_settings, VALUES, log_model=log_adapter_model)
    return adapters_settings, state


def test_dataset_is_raft_and_deterministic(adapters_settings):
    from tandem.adapters import dataset
    from tandem.behavior.spec import load_spec

    spec = load_spec(adapters_settings.spec_path)
    examples = dataset.load_examples(adapters_settings.train_set_path)
    source = dataset.IndexSource(adapters_settings)
    kw = dict(distractors=1, no_oracle_fraction=0.3, holdout_fraction=0.25, seed=7)
    rows = dataset.build_rows(examples, source, spec, **kw)
    assert dataset.digest(rows) == dataset.digest(dataset.build_rows(examples, source, spec, **kw))
    assert dataset.split(examples, 0.25) == dataset.split(list(reversed(examples)), 0.25)
    by_id = {r["id"]: r for r in rows}
    assert sum(r["split"] == "holdout" for r in rows) == 2
    refusal = dataset.refusal_target(spec)
    for r in rows:
        ctx_docs = [c["doc_id"] for c in r["contexts"]]
        assert r["contexts"], r["id"]
        if r["kind"] == "oracle":
            assert set(r["oracle_doc_ids"]) <= set(ctx_docs) and len(ctx_docs) >= 2  # oracle + distractor
            assert r["target"]["citations"] and set(r["target"]["citations"]) <= set(ctx_docs)
        else:
            assert not set(r["oracle_doc_ids"]) & set(ctx_docs)  # no oracle in the context
            assert r["target"] == refusal
    assert by_id["q-tires"]["kind"] == "unanswerable"
    withheld = dataset.build_rows(examples, source, spec, **dict(kw, no_oracle_fraction=0.9))
    assert sum(r["kind"] == "withheld" for r in withheld) > sum(r["kind"] == "withheld" for r in rows)
    # unanswerable examples leave training, never the holdout
    trimmed = dataset.build_rows(examples, source, spec, **dict(kw, unanswerable_fraction=0.0))
    assert not [r for r in trimmed if r["split"] == "train" and r["kind"] == "unanswerable"]
    assert [r["id"] for r in trimmed if r["split"] == "holdout"] == [r["id"] for r in rows if r["split"] == "holdout"]
    assert {r["id"] for r in rows} - {r["id"] for r in trimmed} == {
        r["id"] for r in rows if r["split"] == "train" and r["kind"] == "unanswerable"}
    # short distractors in training rows only
    short = dataset.build_rows(examples, source, spec, **dict(kw, distractor_chars=60))
    for r in short:
        oracle = set(r["oracle_doc_ids"])
        for c in r["contexts"]:
            if c["doc_id"] not in oracle and r["split"] == "train":
                assert len(c["text"]) <= 60 + 8, c["text"]
    assert [r for r in short if r["split"] == "holdout"] == [r for r in rows if r["split"] == "holdout"]


def test_retrain_end_to_end_registers_an_adapter_that_reloads_exactly(first_run):
    from mlflow import MlflowClient

    from tandem import registry

    from tandem.adapters import train
    from tandem.models import base_model_sha256

    settings, state = first_run
    version = state["version"]
    cl = MlflowClient(tracking_uri=settings.mlflow_uri)
    run = cl.get_run(state["run_id"])
    # per-step loss and learning rate, dataset input with digest, snapshot and table artifacts
    assert [m.step for m in cl.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    assert len(cl.get_metric_history(run.info.run_id, "learning_rate")) == 3
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"tandem-raft-train", "tandem-raft-holdout"}
    assert {t.key: t.value for t in inputs["tandem-raft-holdout"].tags}["rows"] == "2"
    artifacts = {a.path for a in cl.list_artifacts(run.info.run_id, "dataset")}
    assert artifacts == {"dataset/raft.jsonl", "dataset/counterfactual.json"}
    altered = json.loads(Path(cl.download_artifacts(run.info.run_id, "dataset/counterfactual.json",
                                                    tempfile.mkdtemp())).read_text())
    from tandem.adapters import params

    assert altered["counterfactual_fraction"] == params.defaults()["counterfactual_fraction"]
    assert altered["realised_share"] == \
        run.data.metrics["dataset_counterfactual_share"]
    assert len(altered["rows"]) == state["counts"].get("train_counterfactual", 0)
    assert any(a.path == "eval/three_way.json" for a in cl.list_artifacts(run.info.run_id, "eval"))
    for model in ("candidate", "base"):
        assert any(k.startswith(model + ".") for k in run.data.metrics), run.data.metrics
    assert run.data.tags["tandem.status"] == "gated"  # run_all ends with the gate (promote tags the version)

    # the version: adapter only, tagged, with a model card
    mv = cl.get_model_version(registry.MODEL, version)
    base_sha = base_model_sha256(settings.base_model)
    assert mv.tags["tandem.base_model_sha256"] == base_sha
    assert mv.tags["tandem.dataset_digest"] == state["dataset_digest"]
    assert mv.tags["tandem.trigger_reason"] == "test retrain" and mv.tags["tandem.eval_run_id"] == "evalrun123"
    assert mv.tags["tandem.index_version"] and "tandem.spec_version" in mv.tags
    # the gate's decision, recomputed from the recorded evaluation, is the one that was applied
    from tandem.adapters import gate as gate_mod, params as params_mod

    ev, p = state["evaluation"], params_mod.validate(state["params"])
    decided = gate_mod.decide(ev["models"]["candidate"], ev["models"].get("champion") or ev["models"]["base"],
                              thresholds=ev["thresholds"], primary=ev["primary"], margin=p.promotion_margin,
                              tolerance=p.regression_tolerance, base=ev["models"].get("base"),
                              base_tolerance=float(ev.get("base_tolerance", 0.05)))
    expect_promoted = decided.promote and p.auto_promote and not p.require_approval
    assert state["promoted"] is expect_promoted
    assert mv.tags["tandem.status"] == "ok"
    assert mv.tags["tandem.gate_decision"] == ("promoted" if expect_promoted else "challenger")
    assert any(k.startswith("tandem.metric.") for k in mv.tags)
    assert "Held-out evaluation" in mv.description and base_sha in mv.description

    resolved = registry.resolve(settings, version)
    files = {p.name: p.stat().st_size for p in resolved.path.iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert sum(files.values()) < 20_000_000  # LoRA weights only, not the 540 MB base

    # reload equivalence: the registered version reproduces the candidate's logits bit for bit
    tokenizer, model = train.load_adapter(settings.base_model, resolved.path, device="cpu", dtype=None)
    logits = train.probe_logits(model, tokenizer)
    assert train.logits_sha256(logits) == mv.tags["tandem.probe_logits_sha256"] == state["training"]["probe_logits_sha256"]
    _, base = train.load_base(settings.base_model, device="cpu", dtype=None)
    assert not (train.probe_logits(base, tokenizer) == logits).all()  # the adapter really changes the model

    # the version is an MLflow logged model of its run, with its metrics and dataset, loadable through pyfunc
    model_id = mv.model_id or mv.source.removeprefix("models:/")
    assert model_id.startswith("m-"), mv.source
    logged = cl.get_logged_model(model_id)
    assert logged.source_run_id == state["run_id"] and logged.name == "tandem-adapter"
    assert {m.key for m in logged.metrics} >= {"candidate.schema_valid"}
    assert any(m.dataset_name == "tandem-raft-holdout" for m in logged.metrics)
    import os

    import mlflow

    saved = dict(os.environ)
    os.environ.update(settings.as_env())  # the loading process's TANDEM_* settings name the live index
    try:
        mlflow.set_registry_uri(settings.mlflow_uri)
        loaded = mlflow.pyfunc.load_model(f"models:/{registry.MODEL}/{version}")
        inner = loaded.unwrap_python_model()
        files_in_model = {p.name for p in inner.adapter_dir.iterdir()}
        assert "adapter_model.safetensors" in files_in_model and "model.safetensors" not in files_in_model
        _, through_pyfunc = train.load_adapter(settings.base_model, inner.adapter_dir, device="cpu", dtype=None)
        assert train.logits_sha256(train.probe_logits(through_pyfunc, tokenizer)) == mv.tags["tandem.probe_logits_sha256"]
        (answered,) = loaded.predict(["How much does the Team plan cost per month?"])
        assert set(answered) >= {"answer", "citations", "confidence", "adapter", "index_version"}
        assert answered["adapter"].startswith("adapter-sha256:") and answered["index_version"]
    finally:
        os.environ.clear()
        os.environ.update(saved)

    # aliases follow the gate
    aliases = registry.list_versions(settings)[0]["aliases"]
    if expect_promoted:
        assert aliases == ["champion"]
    else:
        assert aliases == ["challenger"] and registry.champion_version(settings) is None
        assert mv.tags["tandem.gate_reason"]


def test_worse_candidate_never_becomes_champion(first_run):
    from tandem import registry
    from tandem.adapters import retrain

    settings, state = first_run
    registry.promote(settings, state["version"], reason="test: make the first adapter champion")
    worse = retrain.run_all(settings, dict(VALUES, max_steps=1, learning_rate=1e-6, promotion_margin=1.0,
                                           reason="worse"), log_model=log_adapter_model)
    ev = worse["evaluation"]
    assert ev["champion_version"] == state["version"] and "champion" in ev["models"]
    assert worse["action"] == "challenger" and not worse["promoted"]
    assert registry.champion_version(settings) == state["version"]
    assert registry.resolve(settings, "challenger", download=False).version == worse["version"]
    assert "does not beat the incumbent" in worse["reason"] or "below the spec threshold" in worse["reason"]
    # the same holdout rows, spec and base weights: the base model's scores come from the first run
    assert worse["dataset_digest"] == state["dataset_digest"]
    assert ev["models"]["base"] == state["evaluation"]["models"]["base"]
    assert "base" not in ev["eval_seconds"]  # not generated again (the first run may itself have reused them)
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=settings.mlflow_uri).get_run(worse["run_id"]).data.tags
    assert tags["tandem.base_scores_from"] == state["run_id"]


def test_crash_during_training_leaves_champion_untouched(first_run):
    from mlflow import MlflowClient

    from tandem import tracking
    from tandem import registry
    from tandem.adapters import retrain

    settings, state = first_run
    champion = registry.champion_version(settings)
    before = [r["version"] for r in registry.list_versions(settings)]

    def crash(step, total, loss):
        if step == 2:
            raise RuntimeError("injected crash at step 2")

    with pytest.raises(RuntimeError, match="injected crash"):
        retrain.run_all(settings, dict(VALUES, reason="crash"), log_model=log_adapter_model, on_step=crash)
    assert registry.champion_version(settings) == champion
    assert [r["version"] for r in registry.list_versions(settings)] == before  # nothing registered
    cl = MlflowClient(tracking_uri=settings.mlflow_uri)
    exp = cl.get_experiment_by_name(tracking.EXPERIMENT_TRAINING)
    latest = cl.search_runs([exp.experiment_id], "tags.`tandem.trigger_reason` = 'crash'", max_results=1)[0]
    assert latest.info.status == "FAILED" and latest.data.tags["tandem.status"] == "failed"
    assert "injected crash" in latest.data.tags["tandem.failure"]


def test_cli_list_promote_rollback(first_run):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tandem import registry

    settings, state = first_run
    tandem = str(Path(sys.executable).parent / "tandem")
    env = {**os.environ, **settings.as_env()}

    def cli(*args):
        return subprocess.run([tandem, "adapters", *args], env=env, capture_output=True, text=True, timeout=120)

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert state["version"] in [r["version"] for r in rows] and all("metrics" in r for r in rows)
    assert cli("list").stdout.startswith("version")

    target = next(r["version"] for r in rows if "champion" not in r["aliases"] and r["status"] == "ok")
    current = registry.champion_version(settings)
    out = cli("promote", target, "--json")
    assert out.returncode == 0, out.stderr
    moved = json.loads(out.stdout)
    assert moved["champion"] == target and moved["changed"]
    assert moved["asset_event"].startswith("not recorded: ")  # no Airflow API server for this CLI in tests
    assert registry.champion_version(settings) == target
    back = cli("rollback", "--json")
    assert back.returncode == 0, back.stderr
    assert registry.champion_version(settings) == current

    bad = cli("promote", "99999")
    assert bad.returncode == 2 and "99999" in bad.stderr and "tandem adapters list" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = cli("retrain", "--set", "lora_r=0")
    assert bad.returncode == 2 and "lora_r" in bad.stderr


def test_training_is_deterministic_with_the_seed(first_run, tmp_path):
    from tandem.adapters import params, run_state, train
    from tandem.behavior.spec import load_spec

    settings, state = first_run
    rows = [r for r in run_state.snapshot(settings, state) if r["split"] == "train"]
    spec = load_spec(settings.spec_path)
    p = params.validate(dict(VALUES, max_steps=2, lora_dropout=0.1))  # dropout on: its RNG is seeded too
    shas = []
    for seed_dir in ("a", "b"):
        summary, _, _ = train.train(settings, rows, spec, p, tmp_path / seed_dir, base_model=state["base_model"],
                                    base_sha256=state["base_sha256"])
        shas.append(summary["probe_logits_sha256"])
    assert shas[0] == shas[1]
    other, _, _ = train.train(settings, rows, spec, params.validate(dict(VALUES, max_steps=2, seed=7)),
                              tmp_path / "c", base_model=state["base_model"], base_sha256=state["base_sha256"])
    assert other["probe_logits_sha256"] != shas[0]


def test_a_register_retried_after_its_commit_reuses_the_version(first_run, monkeypatch):
    """The worker died right after the version was registered: the retry registers no second version."""
    from tandem import faults
    from tandem import registry
    from tandem.adapters import promotion

    settings, state = first_run

    def of_run():
        return sorted(mv.version for mv in registry.client(settings).search_model_versions(
            f"name = '{registry.MODEL}' and run_id = '{state['run_id']}'"))

    assert of_run() == [state["version"]]

    class Died(BaseException):
        """Stands for the worker dying right after the registration committed."""

    def die(name, **_context):
        if name == "after_register":
            raise Died(name)

    monkeypatch.setattr(faults, "hook", die)
    with pytest.raises(Died):
        promotion.register(settings, state, log_model=log_adapter_model)
    monkeypatch.setattr(faults, "hook", faults._no_fault)
    again = promotion.register(settings, state, log_model=log_adapter_model)
    assert again["version"] == state["version"]
    assert of_run() == [state["version"]]
    mv = registry.client(settings).get_model_version(registry.MODEL, state["version"])
    assert mv.tags["tandem.status"] == "ok"
