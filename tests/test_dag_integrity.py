"""Integrity of every file in dags/: imports cleanly, nothing heavy or networked at parse time,
owner/tags/retries as the team requires, DAG ids from docs/architecture.md.

Each file is parsed in a fresh subprocess with an audit hook that refuses any socket connection or
DNS lookup, and with TANDEM_* pointing at unreachable services, so a parse-time DB/network access or
a heavy import shows up as a failure here rather than as a slow scheduler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DAG_FILES = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))
CONTRACT_DAG_IDS = {"knowledge_reindex", "behavior_eval", "lora_retrain", "adapter_rollback"}
HEAVY_MODULES = ("torch", "transformers", "peft", "sentence_transformers", "llama_index", "mlflow", "psycopg")

PARSE_SCRIPT = r"""
import json, sys, time
def refuse(event, args):
    if event in ("socket.connect", "socket.getaddrinfo"):
        raise RuntimeError(f"network access at parse time: {event} {args!r}")
from airflow.dag_processing.dagbag import DagBag
sys.addaudithook(refuse)
path = sys.argv[1]
started = time.perf_counter()
bag = DagBag(dag_folder=path, safe_mode=False)
seconds = time.perf_counter() - started
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "tags": sorted(dag.tags or []),
        "doc_md": bool(dag.doc_md),
        "max_active_runs": dag.max_active_runs,
        "tasks": {t.task_id: {"owner": t.owner, "retries": t.retries} for t in dag.tasks},
    }
heavy = sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2]))
print("RESULT" + json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "seconds": seconds,
                             "dags": dags, "heavy": sorted({m.split(".")[0] for m in heavy})}))
"""


def _parse(path: Path, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "AIRFLOW"))}
    env.update({
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
        "TANDEM_HOME": str(tmp_path / "home"),
        "TANDEM_DB_URL": "postgresql://nobody@203.0.113.1:5432/unreachable",
        "TANDEM_MLFLOW_URI": "http://203.0.113.1:5000",
    })
    proc = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, str(path), json.dumps(HEAVY_MODULES)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert lines, f"parsing {path.name} crashed:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT"):])


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_dag_file_integrity(path, tmp_path):
    result = _parse(path, tmp_path)
    assert result["errors"] == {}, result["errors"]
    assert result["dags"], f"{path.name} defines no DAG"
    assert result["seconds"] < 2.0, f"{path.name} took {result['seconds']:.2f}s to parse (limit 2s)"
    assert result["heavy"] == [], f"{path.name} imports heavy modules at parse time: {result['heavy']}"
    for dag_id, dag in result["dags"].items():
        assert dag_id == path.stem, f"{path.name} should define the DAG {path.stem}, found {dag_id}"
        assert "tandem" in dag["tags"], f"{dag_id}: tags {dag['tags']} lack 'tandem'"
        assert len(dag["tags"]) >= 2, f"{dag_id}: add a cadence tag besides 'tandem'"
        assert dag["doc_md"], f"{dag_id}: the module docstring should be the DAG's doc_md"
        assert dag["tasks"], f"{dag_id} has no tasks"
        for task_id, task in dag["tasks"].items():
            assert task["owner"] == "tandem", f"{dag_id}.{task_id}: owner {task['owner']!r}"
            assert task["retries"] >= 1, f"{dag_id}.{task_id}: retries {task['retries']} < 1"


def test_contract_dags_all_present():
    present = {p.stem for p in DAG_FILES}
    missing = CONTRACT_DAG_IDS - present
    assert not missing, f"DAG files missing for {sorted(missing)}"
