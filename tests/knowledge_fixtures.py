"""Helpers and fixtures for the knowledge tests: a tiny real corpus, per-test index names, exact-state reads.

Every test gets its own index name (its own tables) in the session's real Postgres, so tests don't see
each other's rows. The real embedding model is loaded once per test process (cached by the package).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from psycopg import sql

from tandem import db
from tandem.knowledge import extract, store

os.environ.setdefault("TANDEM_TORCH_THREADS", "2")

CORPUS = {
    "pricing/plans.md": """# Plans and pricing

Acme offers three plans for teams of every size.

## Starter

The Starter plan costs 9 dollars per month and includes 3 projects and email support.

## Pro

The Pro plan costs 29 dollars per month. It includes unlimited projects and priority support.

### Discounts

Annual billing on the Pro plan gives two months free.
""",
    "policies/refunds.txt": "Refunds are available within 30 days of purchase. "
                            "Write to billing@acme.example to request a refund of your subscription.\n",
    "guides/install.rst": """Installing Acme
===============

Run the installer from the downloads page.

Requirements
------------

Acme runs on Linux and macOS with at least 2 GB of memory.
""",
    "support/hours.html": "<html><head><title>Support hours</title></head><body><h1>Support</h1>"
                          "<p>The support desk is open Monday to Friday, 9am to 5pm CET.</p>"
                          "<h2>Emergencies</h2><p>Call the outage hotline at any hour for production outages.</p>"
                          "<script>var tracking = 1;</script></body></html>",
    "security/sso.md": """# Single sign-on

Acme supports SAML single sign-on on the Enterprise plan.

## Setup

Upload your identity provider metadata in the admin console, then map the email attribute.
""",
}

# the retrieval canary's golden set for that corpus
GOLDEN = [
    {"query": "How much does the Pro plan cost per month?", "expected_doc_ids": ["acme/pricing/plans.md"]},
    {"query": "Can I get a refund within 30 days?", "expected_doc_ids": ["acme/policies/refunds.txt"]},
    {"query": "SAML single sign-on setup", "expected_doc_ids": ["acme/security/sso.md"]},
    {"query": "When is the support desk open?", "expected_doc_ids": ["acme/support/hours.html"]},
]

_counter = itertools.count()


def write_corpus(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def write_golden(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "kb"
    write_corpus(root, CORPUS)
    return root


@pytest.fixture
def kn(settings, corpus, tmp_path):
    """Settings for one test: its own index, the tiny corpus as source ``acme``, no golden set."""
    name = f"t{os.getpid() % 10000}_{next(_counter)}"
    return settings.replace(index_name=name, sources=(f"acme={corpus}",), torch_threads=2,
                            canary_path=str(tmp_path / "no-golden.jsonl"), chunk_size=128, chunk_overlap=16,
                            embed_batch_size=16, reindex_batch_docs=2, mass_delete_fraction=0.5, max_attempts=3,
                            lock_wait_seconds=0, lock_stale_seconds=1800)


def expected_hashes(root: Path, source: str = "acme") -> dict[str, str]:
    """doc id -> content hash of every valid document under ``root`` (what the index must hold)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(root).as_posix()
            try:
                doc = extract.extract(rel, path.read_bytes())
            except extract.ExtractError:
                continue
            out[f"{source}/{rel}"] = doc.content_hash
    return out


def index_state(settings) -> dict:
    """The published release, read back exactly through the live view: manifest rows and, per document, the
    chunk hashes and ordinals."""
    n = store.names(settings.index_name)
    with db.connection(settings.db_url) as conn:
        if not store.exists(conn, n.spaces):
            return {"manifest": {}, "chunks": {}, "space": None}
        live = conn.execute(sql.SQL("SELECT space_no, table_name FROM {s} WHERE status = 'live'")
                            .format(s=sql.Identifier(n.spaces))).fetchone()
        if live is None:
            return {"manifest": {}, "chunks": {}, "space": None}
        space_no, table = live
        manifest = {r[0]: {"hash": r[1], "chunk_count": r[2], "status": r[3], "attempts": r[4], "error": r[5]}
                    for r in conn.execute(sql.SQL("""
                        SELECT doc_id, content_hash, chunk_count, status, attempts, last_error FROM {m}
                        WHERE space_no = %s ORDER BY doc_id""").format(m=sql.Identifier(n.manifest)), (space_no,))}
        chunks: dict[str, list] = {}
        for doc_id, doc_hash, ordinal, fp in conn.execute(sql.SQL(
                "SELECT doc_id, doc_hash, ordinal, fingerprint FROM {v} ORDER BY doc_id, ordinal")
                .format(v=sql.Identifier(n.live_view))):
            chunks.setdefault(doc_id, []).append((doc_hash, ordinal, fp))
    return {"manifest": manifest, "chunks": chunks, "space": space_no, "table": table}


def assert_consistent(state: dict) -> None:
    """Every document: chunks of one version only, that version = the manifest's hash, ordinals 0..n-1."""
    for doc_id, rows in state["chunks"].items():
        hashes = {h for h, _, _ in rows}
        assert len(hashes) == 1, f"{doc_id} mixes versions: {hashes}"
        assert doc_id in state["manifest"], f"{doc_id} has chunks but no manifest row"
        assert state["manifest"][doc_id]["hash"] == hashes.pop(), f"{doc_id}: chunks and manifest disagree"
        assert [o for _, o, _ in rows] == list(range(len(rows))), f"{doc_id}: ordinals {rows}"
        assert state["manifest"][doc_id]["chunk_count"] == len(rows)
    for doc_id, row in state["manifest"].items():
        if row["hash"] is not None:
            assert doc_id in state["chunks"], f"{doc_id} is indexed in the manifest but has no chunks"


FAULTINJECT = Path(__file__).resolve().parent / "faultinject"


def fault_env(settings, spec: dict) -> dict:
    """``cli_env`` for a subprocess whose fault points act as ``spec`` says (tests/faultinject/sitecustomize.py)."""
    env = cli_env(settings)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAULTINJECT), env.get("PYTHONPATH", "")) if p)
    env["FAULTINJECT"] = json.dumps(spec)
    return env


def cli_env(settings, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update(settings.as_env())
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra or {})
    return env
