"""`tandem index verify` on the real stack: every planted kind of drift is named, `--repair` fixes exactly the
drifted documents as a new release, and a consistent index exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from knowledge_fixtures import fault_env, assert_consistent, cli_env, corpus, expected_hashes, index_state, kn  # noqa: F401
from psycopg import sql

from tandem import db, faults
from tandem.errors import UserError
from tandem.knowledge import reindex, search, store, verify
from tandem.knowledge.status import index_status

TANDEM = str(Path(sys.executable).parent / "tandem")


def _verify_cli(settings, *args) -> tuple[int, dict, str]:
    proc = subprocess.run([TANDEM, "index", "verify", "--json", *args], capture_output=True, text=True, timeout=600,
                          env=cli_env(settings))
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def _plant(settings) -> None:
    """One of each kind of drift, straight into the tables (as a bug or a hand edit would)."""
    n = store.names(settings.index_name)
    at = search.pin(settings)
    t, m = sql.Identifier(at.table), sql.Identifier(n.manifest)
    with db.connection(settings.db_url) as conn:
        # a published chunk row disappears
        conn.execute(sql.SQL("DELETE FROM {t} WHERE doc_id = 'acme/guides/install.rst' AND ordinal = 0").format(t=t))
        # a manifest hash is changed
        conn.execute(sql.SQL("UPDATE {m} SET content_hash = 'f00d' WHERE doc_id = 'acme/policies/refunds.txt'")
                     .format(m=m))
        # an orphan chunk (a document the manifest does not hold) is inserted into the published release
        conn.execute(sql.SQL("""
            INSERT INTO {t} (chunk_id, rel_from, doc_id, ordinal, doc_hash, source, uri, title, heading_path, text,
                             fingerprint, embedding)
            SELECT 'ghost#0', rel_from, 'acme/ghost.md', 0, 'x', source, 'file:///ghost.md', 'Ghost', '', 'boo',
                   fingerprint, embedding
            FROM {t} WHERE doc_id = 'acme/support/hours.html' AND ordinal = 0""").format(t=t))
        # a vector is zeroed
        conn.execute(sql.SQL("""UPDATE {t} SET embedding = array_fill(0, ARRAY[%s])::vector
                                WHERE doc_id = 'acme/security/sso.md' AND ordinal = 0""").format(t=t), (at.dim,))
        # a duplicate of a published chunk id, as a second current row
        conn.execute(sql.SQL("""
            INSERT INTO {t} (chunk_id, rel_from, doc_id, ordinal, doc_hash, source, uri, title, heading_path, text,
                             fingerprint, embedding)
            SELECT chunk_id, rel_from - 1, doc_id, ordinal, doc_hash, source, uri, title, heading_path, text,
                   fingerprint, embedding
            FROM {t} WHERE doc_id = 'acme/pricing/plans.md' AND ordinal = 0""").format(t=t))
        conn.commit()


def test_verify_names_each_planted_drift_and_repair_fixes_exactly_those(kn, corpus):
    with pytest.raises(UserError, match="no published release"):
        verify.verify(kn)
    reindex.run(kn, progress=False)
    rc, report, _ = _verify_cli(kn)
    assert rc == 0 and report["ok"] and report["scanned"] == 5 and report["index_version"] == 1
    assert all(report["drift"][k]["count"] == 0 for k in verify.KINDS)

    _plant(kn)
    # the sources drift too: a new file, and an indexed one removed from the sources
    (corpus / "faq.md").write_text("# FAQ\n\nAnswers to common questions.\n")
    rc, report, _ = _verify_cli(kn)
    assert rc == 1 and not report["ok"]
    d = report["drift"]
    assert [i["doc_id"] for i in d["missing"]["items"]] == ["acme/faq.md"]
    assert [i["doc_id"] for i in d["hash_mismatch"]["items"]] == ["acme/policies/refunds.txt"]
    assert "acme/policies/refunds.txt" in [i["doc_id"] for i in d["chunk_hash_mismatch"]["items"]]
    assert {i["doc_id"] for i in d["chunk_count_mismatch"]["items"]} == {"acme/guides/install.rst",
                                                                          "acme/pricing/plans.md"}
    assert [i["doc_id"] for i in d["orphan_chunks"]["items"]] == ["acme/ghost.md"]
    assert [(i["doc_id"], i["problem"]) for i in d["bad_vectors"]["items"]] == [("acme/security/sso.md", "zero")]
    assert [i["doc_id"] for i in d["duplicate_chunk_ids"]["items"]] == ["acme/pricing/plans.md"]
    assert d["extra"]["count"] == 0 and d["unpublished_visible"]["count"] == 0
    assert report["drifted_documents"] == sorted(["acme/faq.md", "acme/ghost.md", "acme/guides/install.rst",
                                                  "acme/policies/refunds.txt", "acme/pricing/plans.md",
                                                  "acme/security/sso.md"])
    st = index_status(kn)["last_verify"]
    assert st["ok"] is False and st["drift"]["orphan_chunks"] == 1

    proc = subprocess.run([TANDEM, "index", "verify"], capture_output=True, text=True, timeout=600, env=cli_env(kn))
    assert proc.returncode == 1 and "orphan chunks: 1" in proc.stdout and "--repair" in proc.stdout

    untouched = index_state(kn)["chunks"]["acme/support/hours.html"]
    rc, report, _ = _verify_cli(kn, "--repair")
    assert rc == 0 and report["ok"], report["drift"]
    run = report["repaired"]["run"]
    assert run["index_version"] == 2 and report["index_version"] == 2
    assert run["new"] == 1 and run["changed"] == 4 and run["unchanged"] == 1  # exactly the drifted documents
    state = index_state(kn)
    assert_consistent(state)
    assert {doc: r["hash"] for doc, r in state["manifest"].items()} == expected_hashes(corpus)
    assert state["chunks"]["acme/support/hours.html"] == untouched and "acme/ghost.md" not in state["chunks"]
    assert _verify_cli(kn)[0] == 0 and index_status(kn)["last_verify"]["ok"] is True


def test_verify_sees_rows_of_an_unpublished_release_through_the_live_view(kn, corpus):
    reindex.run(kn, progress=False)
    (corpus / "pricing/plans.md").write_text("# Plans\n\nEverything is free now.\n")
    proc = subprocess.run([TANDEM, "reindex"], capture_output=True, text=True, timeout=600,
                          env=fault_env(kn, {"crash_at": "before_canary"}))
    assert proc.returncode == 70  # release 2 was written, never published
    n = store.names(kn.index_name)
    with db.connection(kn.db_url) as conn:  # a broken view that reads the whole table
        conn.execute(sql.SQL("CREATE OR REPLACE VIEW {v} AS SELECT * FROM {t}").format(
            v=sql.Identifier(n.live_view), t=sql.Identifier(search.pin(kn).table)))
        conn.commit()
    report = verify.verify(kn)
    assert report["drift"]["unpublished_visible"]["count"] > 0
    assert {i["rel_from"] for i in report["drift"]["unpublished_visible"]["items"]} == {2}
    repaired = verify.verify(kn, repair=True)
    assert "re-created the live view over the published release" in repaired["repaired"]["actions"]
    assert repaired["drift"]["unpublished_visible"]["count"] == 0, repaired["drift"]["unpublished_visible"]


def test_an_index_remembers_its_sources(kn, corpus):
    """Published from a source named in the run (as the demo does): verify and the next unnamed run use it."""
    from tandem.config import Settings
    from tandem.knowledge import known_sources

    unset = kn.replace(sources=Settings.load(env={}, home=kn.home).sources)  # TANDEM_SOURCES left at its default
    assert unset.is_default("sources") and not kn.is_default("sources")
    assert not Path(unset.sources[0]).exists()
    first = reindex.run(unset, sources=[f"acme={corpus}"], progress=False)
    assert first["sources_from"] == "given" and first["index_version"] == 1
    assert known_sources.resolve(unset) == ([f"acme={corpus.as_uri()}"], "index")

    report = verify.check(unset)
    assert report["ok"] and report["sources_from"] == "index", report
    assert "the index's last published run" in verify.text(report)
    again = reindex.run(unset, progress=False)  # the scheduled run: nothing named, nothing changed
    assert again["sources_from"] == "index"
    assert (again["new"], again["changed"], again["deleted"]) == (0, 0, 0) and again["index_version"] == 1
    planned = reindex.run(unset, dry_run=True, progress=False)  # what `tandem reindex --dry-run` prints
    assert planned["sources_from"] == "index" and (planned["new"], planned["changed"], planned["deleted"]) == (0, 0, 0)
    # a configured TANDEM_SOURCES wins over the index's memory
    assert known_sources.resolve(kn)[1] == "configured"
