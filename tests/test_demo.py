"""`make demo`, fast variant: the whole story on real DAG runs of a real stack (temporary TANDEM_HOME, free ports).

The driver starts the stack (embedded Postgres, MLflow, Airflow api-server/scheduler/dag-processor/triggerer),
triggers the DAGs through Airflow's REST API and reads their results back the same way; nothing is called
in-process. Only the amounts shrink (``tandem.demo.fast``): eval and training slices, a few training steps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.config import Settings
from tandem.demo import data
from tandem.demo.run import STEPS, Demo
from tandem.stack import process

REPO = Path(__file__).resolve().parents[1]


def _env(home: Path, ports: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "AIRFLOW"))}
    return {**env, "TANDEM_HOME": str(home), **ports}


def test_an_unfinished_demo_continues_from_its_next_step(tmp_path):
    settings = Settings.load(home=tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "state.json").write_text(json.dumps({"done": list(STEPS[:2]), "runs": {}}))
    said = []
    todo = Demo(settings, out=said.append).plan(reset=False)
    assert todo == list(STEPS[2:])
    assert said == [f"Continuing an unfinished demo: 2 step(s) done, next is {STEPS[2]}."]


def test_an_unknown_question_is_refused_before_any_step(tmp_path):
    from tandem.errors import UserError

    with pytest.raises(UserError, match="unknown release-2 question 'r999'") as err:
        Demo(Settings.load(home=tmp_path), question="r999")
    assert "r001" in err.value.fix


@pytest.mark.slow
def test_fast_demo_end_to_end(base_model_path):
    from conftest import short_tmp

    home = short_tmp("demo")
    (home / "models").symlink_to(base_model_path.parent)  # the prepared model, not a second conversion
    ports = {"TANDEM_AIRFLOW_PORT": str(process.free_port()), "TANDEM_MLFLOW_PORT": str(process.free_port()),
             "TANDEM_SERVE_PORT": str(process.free_port())}
    env = _env(home, ports)
    report_path = home / "report.json"
    try:
        proc = subprocess.run([sys.executable, "-m", "tandem.demo.run", "--fast", "--report", str(report_path)],
                              env=env, capture_output=True, text=True, timeout=1800, cwd=str(REPO))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        report = json.loads(report_path.read_text())
        o = report["outcomes"]
        assert list(report["timings_s"]) == list(STEPS)

        release1 = len(data.release_doc_ids(1))
        r1 = o["reindex_release1"]
        assert (r1["new"], r1["changed"], r1["unchanged"], r1["deleted"], r1["failed"]) == (release1, 0, 0, 0, 0)
        assert r1["chunks_embedded"] >= release1

        base = o["eval_base"]
        assert base["adapter"] == "base" and base["decision"] == "retrain" and base["kind"] == "behavior"
        assert base["metrics"]["json_valid"] < 0.95  # the base model does not answer in the contract

        retrain = o["retrain"]
        assert retrain["version"] == "1" and retrain["aliases"] == ["champion"]

        champ = o["eval_champion"]
        assert champ["adapter"] == "1" and champ["decision"] == "none", champ  # every threshold met

        changes = data.load_changes()
        r2 = o["reindex_release2"]
        assert (r2["new"], r2["changed"], r2["deleted"], r2["failed"]) == (
            len(changes["added"]), len(changes["edited"]), len(changes["removed"]), 0)
        assert r2["unchanged"] == release1 - len(changes["edited"]) - len(changes["removed"])
        assert r2["index_version"] != r1["index_version"]

        ask = o["ask"]
        assert ask["adapter"] == "v1" and ask["valid"], ask
        assert ask["new_fact_present"] and not ask["old_fact_present"], ask
        assert ask["cites_changed_doc"], ask

        for needle in ("== 7. Where to look", "/dags/lora_retrain", "#/models/tandem-adapter", "/tandem/"):
            assert needle in proc.stdout
    finally:
        down = subprocess.run([sys.executable, "-m", "tandem.stack", "down"], env=env, capture_output=True,
                              text=True, timeout=300, cwd=str(REPO))
        assert down.returncode == 0, down.stderr
    shutil.rmtree(home, ignore_errors=True)
