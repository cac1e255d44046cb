"""Knowledge building blocks without a database: sources, globs, extraction, chunking, fingerprint."""

from __future__ import annotations

import pytest

from tandem.config import Settings
from tandem.errors import UserError
from tandem.knowledge import chunking, extract, fingerprint, sources
from tandem.knowledge.embedding import model_info
from tandem.models import embedding_model_path


def test_source_specs_give_stable_names_and_uris(tmp_path):
    s = sources.parse_source(f"acme={tmp_path}/kb/")
    assert s.name == "acme" and s.root == f"file://{tmp_path}/kb"
    s = sources.parse_source(str(tmp_path / "docs"))
    assert s.name == "docs" and s.root == f"file://{tmp_path}/docs"
    assert sources.parse_source("s3://bucket/prefix/").root == "s3://bucket/prefix"
    assert sources.parse_source("kb=s3://bucket/prefix").name == "kb"
    with pytest.raises(UserError, match="two sources have the name"):
        sources.parse_sources([f"a={tmp_path}/x", f"a={tmp_path}/y"])
    with pytest.raises(UserError, match="no knowledge sources"):
        sources.parse_sources([])


def test_globs_span_folders():
    inc, exc = ("**/*.md", "**/*.txt"), ("**/.*/**", "**/.*", "drafts/**")
    assert sources.selected("a.md", inc, exc)
    assert sources.selected("x/y/z.md", inc, exc)
    assert not sources.selected("x/y/z.pdf", inc, exc)
    assert not sources.selected(".git/config.md", inc, exc)
    assert not sources.selected("x/.hidden.md", inc, exc)
    assert not sources.selected("drafts/a.md", inc, exc)


def test_globs_negation_braces_and_single_folder_stars():
    # `!` in the include list excludes; `*` stays inside one folder; braces expand
    inc = ("**/*.{md,rst}", "!archive/**")
    assert sources.selected("guide/a.rst", inc, ())
    assert not sources.selected("archive/2019/a.md", inc, ())
    assert sources.selected("docs/archive.md", inc, ())
    assert not sources.selected("a/b.md", ("*.md",), ())
    assert sources.selected("a/b.md", ("a/*.md",), ())
    assert not sources.selected("a/b/c.md", ("a/*.md",), ())
    # only exclusions: everything else is selected
    assert sources.selected("x/y.bin", ("!**/*.md",), ())
    assert not sources.selected("x/y.md", ("!**/*.md",), ())


def test_list_entries_ids_and_problems(tmp_path):
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.md").write_text("# A\n\ntext")
    (root / "b.txt").write_text("b")
    (root / "skip.pdf").write_bytes(b"%PDF")
    (root / "gone.md").symlink_to(tmp_path / "missing")
    entries = list(sources.list_entries(sources.parse_source(f"kb={root}"), ("**/*.md", "**/*.txt"), ()))
    assert [e.doc_id for e in entries] == ["kb/b.txt", "kb/gone.md", "kb/sub/a.md"]
    assert entries[2].uri == f"file://{root}/sub/a.md"
    assert entries[1].problem and "broken symlink" in entries[1].problem
    with pytest.raises(UserError, match="does not exist"):
        list(sources.list_entries(sources.parse_source(f"kb={tmp_path}/nope"), ("**/*.md",), ()))


def test_extract_formats_titles_and_hash():
    md = extract.extract("a/plans.md", b"# Plans\r\n\r\n\r\n\r\nSome text.   \n")
    assert md.title == "Plans" and md.text == "# Plans\n\nSome text." and md.fmt == "markdown"
    rst = extract.extract("setup.rst", "Install\n=======\n\nRun it.\n\nNeeds\n-----\n\nLinux.\n".encode())
    assert rst.title == "Install" and "# Install" in rst.text and "## Needs" in rst.text
    html = extract.extract("x.html", b"<html><head><title>T</title><style>p{}</style></head>"
                                     b"<body><h2>Sec</h2><p>Hello <b>world</b></p><script>x()</script></body></html>")
    assert html.title == "T" and "## Sec" in html.text and "Hello world" in html.text and "x()" not in html.text
    txt = extract.extract("notes/release_notes.txt", b"plain")
    assert txt.title == "release notes" and txt.fmt == "text"
    # the hash covers title and text only: same content, same hash; a title change changes it
    assert extract.extract("b/plans.md", b"# Plans\n\nSome text.").content_hash == md.content_hash
    assert extract.extract("b/plans.md", b"# Plans v2\n\nSome text.").content_hash != md.content_hash


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"   \n\n", "empty file"),
    (b"\xff\xfe\x00abc", "binary"),
    (b"caf\xe9 au lait", "not valid UTF-8"),
])
def test_extract_rejects_bad_bytes_with_a_reason(data, reason):
    with pytest.raises(extract.ExtractError, match=reason):
        extract.extract("x.md", data)


def test_chunks_carry_title_and_heading_path_and_fit_the_model():
    ref = embedding_model_path("")
    info = model_info(ref)
    cfg = chunking.ChunkConfig(chunk_size=48, chunk_overlap=8, max_seq_length=info.max_seq_length, model_ref=ref)
    text = "# Guide\n\nIntro words.\n\n## Install\n\n" + " ".join(f"Step {i} runs the installer." for i in range(40)) + \
           "\n\n```\n# not a heading\n```\n\n## Use\n\nOpen the app."
    doc = extract.extract("guide.md", text.encode())
    chunks = chunking.chunk_document("kb/guide.md", doc, cfg)
    paths = [c.heading_path for c in chunks]
    assert paths[0] == "" and "Install" in paths and paths[-1] == "Use"
    assert paths.count("Install") >= 3  # the long section was split with the size limit
    assert all(c.title == "Guide" for c in chunks)
    assert chunks[-1].embed_text == "Guide > Use\n\nOpen the app."
    count = __import__("tandem.knowledge.embedding", fromlist=["token_counter"]).token_counter(ref)
    assert max(len(count(c.embed_text)) for c in chunks) <= 48
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    # stable ids: the same document chunks to the same ids
    assert [c.chunk_id for c in chunking.chunk_document("kb/guide.md", doc, cfg)] == [c.chunk_id for c in chunks]


def test_fingerprint_changes_with_the_chunker_not_with_paths(tmp_path):
    base = Settings.load(env={"TANDEM_HOME": str(tmp_path)})
    fp1 = fingerprint.current(base)[0]
    assert fingerprint.current(base.replace(sources=("/elsewhere",)))[0] == fp1
    assert fingerprint.current(base.replace(chunk_size=base.chunk_size + 1))[0] != fp1
    fp, spec, info, _ = fingerprint.current(base)
    assert spec["dim"] == info.dim == 384 and len(info.weights_sha256) == 64
    assert fingerprint.fingerprint_of({**spec, "model_ref": "/other/path"}) == fp


def test_batches_are_grouped_under_max_map_length():
    from tandem.knowledge.batch import group as group_batches

    assert group_batches([], 1024) == []
    assert group_batches([0, 1, 2], 1024) == [[0], [1], [2]]
    groups = group_batches(list(range(2500)), 1024)
    assert len(groups) == 1024 and [b for g in groups for b in g] == list(range(2500))  # all, in order, once
    assert {len(g) for g in groups} == {2, 3}  # as even as the numbers allow
    assert group_batches(list(range(5)), 2) == [[0, 1, 2], [3, 4]]


def test_markdown_table_rows_become_records_with_their_headers():
    body = ("Limits per plan:\n\n| Plan | Requests per API key | Burst |\n|---|:---:|---|\n"
            "| Starter | 120 requests per minute | 10 |\n| Team | 1,000 requests per minute | |\n\nAfter the table.")
    assert chunking.tables_as_records(body) == (
        "Limits per plan:\n\nStarter — Requests per API key: 120 requests per minute; Burst: 10.\n"
        "Team — Requests per API key: 1,000 requests per minute.\n\nAfter the table.")
    assert chunking.tables_as_records("a | b\nno rule here") == "a | b\nno rule here"  # not a table
    assert chunking.tables_as_records("| A | B |\n|---|---|\n| x \\| y | 2 |") == "x | y — B: 2."
