"""The README tells the truth: its config table is the generated one, and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from tandem.config import markdown_table

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_config_table_matches_the_settings():
    block = README.split("<!-- config-table:start", 1)[1].split("-->", 1)[1].split("<!-- config-table:end -->")[0]
    assert block.strip() == markdown_table().strip(), "regenerate the table with `tandem config --markdown`"


def test_readme_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    for target in set(re.findall(r"`make ([a-z-]+)", README)):
        assert target in targets, f"README mentions `make {target}` but the Makefile has no such target"


def test_ci_runs_the_readme_test_command():
    assert "make test" in README
    assert re.search(r"^make test$", (REPO / ".ci/run").read_text(), flags=re.M)


def test_every_image_and_local_link_of_the_docs_exists():
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            path = target.split("#", 1)[0]
            if not path or re.match(r"[a-z]+:", path):  # an anchor in the same file, or a URL
                continue
            if not (doc.parent / path).exists():
                missing.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not missing, f"links to files that do not exist (make them, or fix the link): {missing}"
