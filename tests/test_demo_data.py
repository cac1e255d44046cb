"""Checks that bind the demo data together (fast, pure Python).

The knowledge base (release 1 and the release-2 patch), the golden retrieval set, the eval and training
sets and the release-2 questions are written by hand; these tests make sure they agree with each other:
every referenced doc exists in the right release, every gold fact occurs in its gold documents, release 2
changes exactly the facts it claims to, eval and training questions do not overlap, and
``materialise_release1`` / ``apply_release2`` produce exactly the listed changes.
"""

from __future__ import annotations

import json
import re
import unicodedata

import pytest

from tandem.demo import data
from tandem.errors import UserError

# For each unanswerable question: a term it hinges on that no document of either release contains.
# This is how we know the knowledge base really does not answer it.
ABSENT_TERMS = {
    'Do you offer a discount for nonprofit organisations?': 'nonprofit',
    'Who is the CEO of Acme Software?': 'CEO',
    'Does Beacon have a Jira integration that opens tickets for outages?': 'Jira',
    'Can Beacon run gRPC health checks?': 'gRPC',
    'Will Acme sign a HIPAA business associate agreement?': 'HIPAA',
    'Is there a self-hosted version of Beacon I can run in my own data centre?': 'self-host',
    'Is there an official Helm chart for deploying the private agent on Kubernetes?': 'Helm',
    'Can Beacon send alerts to a Telegram group?': 'Telegram',
    'Does the Beacon API have a GraphQL endpoint?': 'GraphQL',
    'Can members sign in with our LDAP directory?': 'LDAP',
    'How do I export check results to BigQuery?': 'BigQuery',
    "Where can I see Acme Beacon's public product roadmap?": 'roadmap',
    'Can I plug in my own Twilio account to send SMS alerts?': 'Twilio',
    'Can Beacon monitor WebSocket endpoints?': 'WebSocket',
    'Is there a student discount?': 'student',
    'How many employees work at Acme?': 'employees',
    'What programming language is the private agent written in?': 'programming language',
    'Does Beacon integrate with Splunk?': 'Splunk',
    'Is Acme Beacon FedRAMP authorised?': 'FedRAMP',
    'Do you have an affiliate program?': 'affiliate',
    'What commission do resellers earn?': 'reseller',
    "What was Acme's revenue last year?": 'revenue',
    'When was Acme Software founded?': 'founded',
    'Can I get alerts on WhatsApp?': 'WhatsApp',
    'How much does a dedicated IP address for my probes cost?': 'dedicated IP',
    'Can I translate my status page into Japanese?': 'Japanese',
    'Does Beacon offer real user monitoring of page views?': 'real user monitoring',
    'Is there an official Python SDK for the API?': 'Python',
    'Is there an official client library for the API in Go?': 'client library',
    'Do you sell gift cards for Beacon subscriptions?': 'gift card',
    'Can I embed a status widget on my website?': 'widget',
    'Does Beacon accept OpenTelemetry traces?': 'OpenTelemetry',
    'How long do you keep chat transcripts with support?': 'transcript',
    'Can I buy Beacon through the AWS Marketplace?': 'Marketplace',
    'Does Beacon post alerts to Discord?': 'Discord',
    'Is there a referral bonus for recommending Beacon to another company?': 'referral',
    'Can Beacon test email inbox placement for my newsletters?': 'inbox placement',
    'Does the beacon CLI have shell completion for zsh?': 'zsh',
    'Is there a Chrome extension for Beacon?': 'Chrome extension',
    'Does Beacon check DNSSEC signatures?': 'DNSSEC',
    'Does Acme run its servers on renewable energy?': 'renewable',
    'Is Beacon PCI DSS compliant?': 'PCI',
    'Can Beacon poll network switches over SNMP?': 'SNMP',
    'Can Beacon alert me when a Kafka consumer falls behind?': 'Kafka',
    'Do you offer on-site training for our operations team?': 'on-site training',
    'Where can I download the OpenAPI specification of the API?': 'OpenAPI',
    'Can an HTTP monitor present a client certificate for mutual TLS?': 'client certificate',
    'Does Beacon integrate with Grafana dashboards?': 'Grafana',
    'Can Beacon warn me before my domain registration expires via WHOIS?': 'WHOIS',
    'Do you have special pricing for startups?': 'startup',
    'Is there a Pulumi provider for Beacon?': 'Pulumi',
    'Is there an Ansible module for managing monitors?': 'Ansible',
    'What are the opening hours of your Tokyo office?': 'Tokyo',
}



def _texts(release: int) -> dict[str, str]:
    return {data.doc_id(p): f.read_text(encoding="utf-8") for p, f in data.release_files(release).items()}


@pytest.fixture(scope="module")
def r1() -> dict[str, str]:
    return _texts(1)


@pytest.fixture(scope="module")
def r2() -> dict[str, str]:
    return _texts(2)


@pytest.fixture(scope="module")
def changes() -> dict[str, list[str]]:
    return data.load_changes()


@pytest.fixture(scope="module")
def eval_set() -> list[dict]:
    return data.read_jsonl(data.EVAL_SET_PATH)


@pytest.fixture(scope="module")
def train_set() -> list[dict]:
    return data.read_jsonl(data.TRAIN_SET_PATH)


@pytest.fixture(scope="module")
def golden() -> list[dict]:
    return data.read_jsonl(data.GOLDEN_RETRIEVAL_PATH)


@pytest.fixture(scope="module")
def release2_questions() -> list[dict]:
    return data.read_jsonl(data.RELEASE2_QUESTIONS_PATH)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9$%.,@/_-]+", text.lower())


def _flat(text: str) -> str:
    """Whitespace collapsed: markdown wraps lines, a fact may span a line break."""
    return " ".join(text.split())


def _fold(text: str) -> str:
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", _flat(unicodedata.normalize("NFKC", text)).casefold())


def _has(haystack: str, fact: str) -> bool:
    """Fact matching as answers are scored: case-insensitive, whitespace collapsed, thousands separators
    ignored, and at word boundaries ("$19" is not in "$190", "25" is not in "250")."""
    h, n = _fold(haystack), _fold(fact)
    pattern = (r"(?<!\w)" if n[0].isalnum() else "") + re.escape(n) + (r"(?!\w)" if n[-1].isalnum() else "")
    return re.search(pattern, h) is not None


def _norm(question: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", question.lower()))


# --- the knowledge base -----------------------------------------------------------------------------

def test_release1_is_40_to_80_markdown_documents_with_headings(r1):
    assert 40 <= len(r1) <= 80
    folders = {doc.split("/")[1] for doc in r1}
    assert {"setup", "pricing", "limits", "support", "troubleshooting", "changelog"} <= folders
    for doc, text in r1.items():
        size = len(text.encode("utf-8"))
        assert 500 <= size <= 5000, f"{doc} is {size} bytes"
        assert text.startswith("# "), f"{doc} does not start with a title heading"
        assert "\n## " in text, f"{doc} has no section headings"
    # only markdown in the release folder
    assert all(p.endswith(".md") for p in data._scan(data.RELEASE1_DIR))


def test_doc_ids_are_source_name_plus_posix_path(r1, r2):
    for doc in set(r1) | set(r2):
        assert re.fullmatch(r"acme/[a-z0-9-]+/[a-z0-9-]+\.md", doc), doc
    assert data.doc_id("pricing/plans.md") == "acme/pricing/plans.md"
    assert data.rel_path("acme/pricing/plans.md") == "pricing/plans.md"
    assert data.source_spec("/srv/kb") == "acme=/srv/kb"
    with pytest.raises(UserError):
        data.rel_path("other/pricing/plans.md")


def test_release2_change_set_shape(changes, r1, r2):
    assert {k: len(v) for k, v in changes.items()} == {"edited": 5, "removed": 2, "added": 3}
    edited = {data.doc_id(p) for p in changes["edited"]}
    removed = {data.doc_id(p) for p in changes["removed"]}
    added = {data.doc_id(p) for p in changes["added"]}
    assert set(r2) == (set(r1) - removed) | added
    for doc in edited:
        assert r1[doc] != r2[doc], f"{doc} is listed as edited but did not change"
    for doc in set(r1) & set(r2) - edited:
        assert r1[doc] == r2[doc], f"{doc} changed but is not listed as edited"
    for doc in added:
        size = len(r2[doc].encode("utf-8"))
        assert 500 <= size <= 5000 and r2[doc].startswith("# ")
    # the patch folder holds exactly the edited and added documents (plus changes.json)
    assert set(data._scan(data.RELEASE2_DIR)) == set(changes["edited"]) | set(changes["added"]) | {"changes.json"}


# --- materialise / apply ----------------------------------------------------------------------------

def _folder(path) -> dict[str, bytes]:
    return {p: f.read_bytes() for p, f in data._scan(path).items()}


def _release_bytes(release: int) -> dict[str, bytes]:
    return {p: f.read_bytes() for p, f in data.release_files(release).items()}


def test_materialise_then_apply_release2_produces_exactly_the_listed_changes(tmp_path, changes):
    dest = tmp_path / "kb"
    first = data.materialise_release1(dest)
    assert first["documents"] == first["written"] == len(data.release_files(1))
    assert _folder(dest) == _release_bytes(1)
    assert data.detect_release(dest) == 1

    applied = data.apply_release2(dest)
    assert applied["already_applied"] is False
    for kind in data.CHANGE_KINDS:
        assert applied[kind] == [data.doc_id(p) for p in changes[kind]]
    assert _folder(dest) == _release_bytes(2)
    assert data.detect_release(dest) == 2
    assert not (dest / "setup" / "legacy-agent-v1.md").exists()

    again = data.apply_release2(dest)  # idempotent
    assert again["already_applied"] is True
    assert all(again[kind] == [] for kind in data.CHANGE_KINDS)
    assert _folder(dest) == _release_bytes(2)

    back = data.materialise_release1(dest)  # a demo reset goes back to release 1
    assert back["removed"] == len(changes["added"])
    assert back["written"] == len(changes["edited"]) + len(changes["removed"])
    assert _folder(dest) == _release_bytes(1)
    assert data.materialise_release1(dest)["written"] == 0


def test_materialise_refuses_a_folder_with_other_files_and_changes_nothing(tmp_path):
    dest = tmp_path / "kb"
    (dest / "notes").mkdir(parents=True)
    (dest / "notes" / "mine.md").write_text("# my notes\n")
    with pytest.raises(UserError, match="notes/mine.md"):
        data.materialise_release1(dest)
    assert _folder(dest) == {"notes/mine.md": b"# my notes\n"}
    result = data.materialise_release1(dest, force=True)
    assert result["removed"] == 1
    assert _folder(dest) == _release_bytes(1)


def test_materialise_rejects_a_file_as_destination(tmp_path):
    target = tmp_path / "file.md"
    target.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        data.materialise_release1(target)
    assert target.read_text() == "x"


def test_apply_release2_needs_the_demo_knowledge_base(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.apply_release2(tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.md").write_text("# hi\n")
    with pytest.raises(UserError, match="materialise_release1"):
        data.apply_release2(other)
    assert _folder(other) == {"readme.md": b"# hi\n"}
    assert data.detect_release(other) is None


def test_cli_entry_point(tmp_path, capsys):
    dest = tmp_path / "kb"
    assert data.main(["release1", str(dest)]) == 0
    assert data.main(["release2", str(dest), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["edited"] == [data.doc_id(p) for p in data.load_changes()["edited"]]
    assert data.main(["status", str(dest)]) == 0
    assert "release 2" in capsys.readouterr().out
    assert data.main(["release2", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(UserError, match=r"bad.jsonl:3: expected a JSON object"):
        data.read_jsonl(path)
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: invalid JSON"):
        data.read_jsonl(path)


# --- golden retrieval set ---------------------------------------------------------------------------

def test_golden_queries_point_at_documents_of_both_releases(golden, r1, r2):
    assert 25 <= len(golden) <= 40
    assert len({_norm(g["query"]) for g in golden}) == len(golden)
    for g in golden:
        assert set(g) == {"query", "expected_doc_ids"}
        assert g["query"].strip() and g["expected_doc_ids"]
        for doc in g["expected_doc_ids"]:
            assert doc in r1 and doc in r2, f"{g['query']!r}: {doc} is not in both releases"


# --- eval and training sets -------------------------------------------------------------------------

EVAL_FIELDS = {"id": str, "question": str, "gold_doc_ids": list, "gold_facts": list, "reference_answer": str,
               "answerable": bool}
TRAIN_FIELDS = {"id": str, "question": str, "oracle_doc_ids": list, "answer": str, "gold_facts": list,
                "answerable": bool}


def _check_rows(rows, fields, prefix, docs_key, answer_key):
    assert [r["id"] for r in rows] == [f"{prefix}{i:03d}" for i in range(1, len(rows) + 1)]
    for r in rows:
        assert set(r) == set(fields), r["id"]
        for key, typ in fields.items():
            assert isinstance(r[key], typ), (r["id"], key)
        assert r["question"].strip() == r["question"] and r["question"]
        assert all(isinstance(x, str) and x for x in r[docs_key] + r["gold_facts"]), r["id"]
        if r["answerable"]:
            assert r[docs_key] and r["gold_facts"], r["id"]
            assert 0 < len(r[answer_key].split()) <= 40, r["id"]
            for fact in r["gold_facts"]:
                assert _has(r[answer_key], fact), f"{r['id']}: {fact!r} is not in its answer"
                assert fact == fact.strip() and fact[-1] not in ".,;:!?", f"{r['id']}: {fact!r} ends in punctuation"
        else:
            assert r[docs_key] == [] and r["gold_facts"] == [] and r[answer_key] == "", r["id"]
    unanswerable = sum(not r["answerable"] for r in rows) / len(rows)
    assert 0.15 <= unanswerable <= 0.20, unanswerable


def test_eval_set_shape(eval_set):
    assert 60 <= len(eval_set) <= 100
    _check_rows(eval_set, EVAL_FIELDS, "e", "gold_doc_ids", "reference_answer")


def test_train_set_shape(train_set):
    assert 180 <= len(train_set) <= 240
    _check_rows(train_set, TRAIN_FIELDS, "t", "oracle_doc_ids", "answer")


@pytest.mark.parametrize("name,docs_key", [("eval", "gold_doc_ids"), ("train", "oracle_doc_ids")])
def test_gold_facts_occur_in_gold_docs_in_both_releases(name, docs_key, eval_set, train_set, r1, r2):
    """Eval and training data hold over both releases: no removed doc, no fact that release 2 changes."""
    rows = eval_set if name == "eval" else train_set
    for r in rows:
        for doc in r[docs_key]:
            assert doc in r1, f"{r['id']}: {doc} is not a release-1 document"
            assert doc in r2, f"{r['id']}: {doc} is removed in release 2"
        for release, texts in (("1", r1), ("2", r2)):
            context = "\n".join(texts[d] for d in r[docs_key])
            for fact in r["gold_facts"]:
                assert _has(context, fact), f"{r['id']}: {fact!r} not in {r[docs_key]} (release {release})"


def test_answers_never_state_a_value_that_release2_changes(eval_set, train_set, release2_questions):
    old_by_doc: dict[str, set[str]] = {}
    for q in release2_questions:
        for doc in q["gold_doc_ids"]:
            old_by_doc.setdefault(doc, set()).update(q["old_facts"])
    for r in eval_set + train_set:
        docs = r.get("gold_doc_ids", r.get("oracle_doc_ids"))
        answer = r.get("reference_answer", r.get("answer"))
        for doc in docs:
            for old in old_by_doc.get(doc, ()):
                assert not _has(answer, old), f"{r['id']} states {old!r}, which release 2 changes in {doc}"


def test_eval_and_train_questions_do_not_overlap(eval_set, train_set, release2_questions):
    sets = {"eval": eval_set, "train": train_set, "release2": release2_questions}
    for name, rows in sets.items():
        assert len({_norm(r["question"]) for r in rows}) == len(rows), f"duplicate question in {name}"
    all_questions = [_norm(r["question"]) for rows in sets.values() for r in rows]
    assert len(set(all_questions)) == len(all_questions), "a question occurs in two sets"
    # no near-duplicates between eval and train (word overlap), so the eval measures more than recall
    train_words = [(r["id"], set(_words(r["question"]))) for r in train_set]
    for r in eval_set:
        words = set(_words(r["question"]))
        for tid, other in train_words:
            jaccard = len(words & other) / len(words | other)
            assert jaccard < 0.75, f"eval {r['id']} and train {tid} are near-duplicates"
    # no training example asks for the same facts from the same documents as an eval example
    eval_keys = {(frozenset(r["gold_doc_ids"]), frozenset(r["gold_facts"])) for r in eval_set if r["answerable"]}
    for r in train_set:
        if r["answerable"]:
            assert (frozenset(r["oracle_doc_ids"]), frozenset(r["gold_facts"])) not in eval_keys, r["id"]


def test_every_stable_document_is_covered_by_the_behavior_data(eval_set, train_set, r1, r2):
    cited = {d for r in eval_set for d in r["gold_doc_ids"]} | {d for r in train_set for d in r["oracle_doc_ids"]}
    stable = set(r1) & set(r2)
    assert stable - cited == set()


def test_unanswerable_questions_are_not_answered_by_any_document(eval_set, train_set, r1, r2):
    corpus = _flat("\n".join(list(r1.values()) + list(r2.values()))).lower()
    questions = {r["question"] for r in eval_set + train_set if not r["answerable"]}
    assert questions == set(ABSENT_TERMS)
    for question, term in ABSENT_TERMS.items():
        assert term.lower() in question.lower(), question
        assert term.lower() not in corpus, f"{term!r} occurs in the knowledge base: {question!r} may be answerable"


# --- release-2 questions ----------------------------------------------------------------------------

def test_release2_questions_ask_for_the_new_values(release2_questions, changes, r1, r2):
    edited = {data.doc_id(p) for p in changes["edited"]}
    assert [q["id"] for q in release2_questions] == [f"r{i:03d}" for i in range(1, len(release2_questions) + 1)]
    assert {d for q in release2_questions for d in q["gold_doc_ids"]} == edited
    for q in release2_questions:
        assert set(q) == {"id", "question", "gold_doc_ids", "gold_facts", "old_facts", "answerable"}
        assert q["answerable"] is True and q["gold_facts"] and q["old_facts"]
        for doc in q["gold_doc_ids"]:
            for new in q["gold_facts"]:
                assert _has(r2[doc], new), f"{q['id']}: new value {new!r} not in release 2 of {doc}"
                assert not _has(r1[doc], new), f"{q['id']}: new value {new!r} already in release 1 of {doc}"
            for old in q["old_facts"]:
                assert _has(r1[doc], old), f"{q['id']}: old value {old!r} not in release 1 of {doc}"
                assert not _has(r2[doc], old), f"{q['id']}: old value {old!r} still in release 2 of {doc}"
