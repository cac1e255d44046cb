"""The demo data: Acme Beacon's documentation (release 1 and the release-2 patch) and the JSONL sets.

Acme Beacon is a fictional uptime-monitoring SaaS. Its docs are the demo's knowledge base; the index
is configured with the source name ``acme`` (``acme=<folder>``), so a document's id is
``acme/<path relative to the folder, posix>``, for example ``acme/pricing/plans.md``.

- ``materialise_release1(dest)`` makes ``dest`` hold exactly release 1 (64 documents).
- ``apply_release2(dest)`` applies the release-2 patch listed in ``kb/release2/changes.json``: five
  documents edited with changed facts, two removed, three added. It is idempotent and returns what it
  changed, as doc ids.
- ``detect_release(dest)`` says whether ``dest`` holds release 1, release 2, or something else.

The data files (paths below) are shared by the other areas' tests and by ``make demo``:
``golden_retrieval.jsonl`` (valid over both releases), ``eval_set.jsonl`` and ``train_set.jsonl`` (over
release 1, with no fact that release 2 changes), and ``release2_questions.jsonl`` (new and old values).

Usable without Airflow: ``python -m tandem.demo.data release1|release2|status DEST [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tandem.errors import TandemError, UserError

SOURCE_NAME = "acme"

DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"
KB_DIR = DEMO_DIR / "kb"
RELEASE1_DIR = KB_DIR / "release1"
RELEASE2_DIR = KB_DIR / "release2"
CHANGES_PATH = RELEASE2_DIR / "changes.json"
GOLDEN_RETRIEVAL_PATH = DEMO_DIR / "golden_retrieval.jsonl"
EVAL_SET_PATH = DEMO_DIR / "eval_set.jsonl"
TRAIN_SET_PATH = DEMO_DIR / "train_set.jsonl"
RELEASE2_QUESTIONS_PATH = DEMO_DIR / "release2_questions.jsonl"
BEHAVIOR_SPEC_PATH = DEMO_DIR / "behavior_spec.yaml"  # owned by the behavior-eval area

DOC_SUFFIX = ".md"
CHANGE_KINDS = ("edited", "removed", "added")


def doc_id(rel_path: str) -> str:
    """The index's id of a document at ``rel_path`` (posix, relative to the source root)."""
    return f"{SOURCE_NAME}/{rel_path}"


def source_spec(dest: Path | str) -> str:
    """The ``--source`` / ``TANDEM_SOURCES`` entry that indexes ``dest`` under the demo's source name."""
    return f"{SOURCE_NAME}={Path(dest)}"


def rel_path(doc: str) -> str:
    """Inverse of ``doc_id``: ``acme/pricing/plans.md`` -> ``pricing/plans.md``."""
    prefix = SOURCE_NAME + "/"
    if not doc.startswith(prefix):
        raise UserError(f"doc id {doc!r} is not a demo document id", fix=f"demo doc ids start with {prefix!r}")
    return doc[len(prefix):]


def _scan(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` (sorted), keyed by its posix path relative to ``root``."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            files[path.relative_to(root).as_posix()] = path
    return files


def load_changes() -> dict[str, list[str]]:
    """The release-2 change set: ``{"edited": [...], "removed": [...], "added": [...]}`` of relative paths."""
    raw = json.loads(CHANGES_PATH.read_text(encoding="utf-8"))
    release1 = {p for p in _scan(RELEASE1_DIR) if p.endswith(DOC_SUFFIX)}
    changes = {}
    for kind in CHANGE_KINDS:
        paths = raw.get(kind)
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise TandemError(f"{CHANGES_PATH}: {kind!r} must be a list of paths")
        changes[kind] = sorted(paths)
    for path in changes["edited"] + changes["added"]:
        if not (RELEASE2_DIR / path).is_file():
            raise TandemError(f"{CHANGES_PATH}: {path} is listed but {RELEASE2_DIR / path} is missing")
    for path in changes["edited"] + changes["removed"]:
        if path not in release1:
            raise TandemError(f"{CHANGES_PATH}: {path} is not a release-1 document")
    for path in changes["added"]:
        if path in release1:
            raise TandemError(f"{CHANGES_PATH}: {path} is listed as added but exists in release 1")
    return changes


def release_files(release: int) -> dict[str, Path]:
    """The documents of a release: relative path -> the packaged file holding its content (sorted)."""
    docs = {p: f for p, f in _scan(RELEASE1_DIR).items() if p.endswith(DOC_SUFFIX)}
    if release == 1:
        return docs
    if release != 2:
        raise UserError(f"release must be 1 or 2, got {release!r}")
    changes = load_changes()
    for path in changes["removed"]:
        docs.pop(path)
    for path in changes["edited"] + changes["added"]:
        docs[path] = RELEASE2_DIR / path
    return dict(sorted(docs.items()))


def release_doc_ids(release: int) -> list[str]:
    """Sorted doc ids of a release."""
    return [doc_id(p) for p in release_files(release)]


def read_doc(release: int, doc: str) -> str:
    """Text of a document (by doc id or relative path) in a release."""
    path = rel_path(doc) if doc.startswith(SOURCE_NAME + "/") else doc
    files = release_files(release)
    if path not in files:
        raise UserError(f"{doc} is not a document of release {release}")
    return files[path].read_text(encoding="utf-8")


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; a bad line is a UserError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}", fix="check the path") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: invalid JSON ({exc.msg})", fix="fix or remove that line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}",
                            fix="write one JSON object per line")
        rows.append(row)
    return rows


def _write_if_changed(src: Path, dest: Path) -> bool:
    """Copy ``src`` to ``dest`` atomically unless ``dest`` already has the same bytes. True if written."""
    data = src.read_bytes()
    if dest.is_file() and not dest.is_symlink() and dest.read_bytes() == data:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.is_dir():
        raise UserError(f"{dest} is a symlink or a folder, not a demo document", fix="remove it and retry")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _remove_empty_dirs(root: Path) -> None:
    for path in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                       key=lambda p: len(p.parts), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()


def _check_dest(dest: Path) -> Path:
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} exists and is not a folder", fix="pass a folder for the demo knowledge base")
    return dest


def materialise_release1(dest: Path, *, force: bool = False) -> dict[str, Any]:
    """Make ``dest`` hold exactly release 1 of the demo knowledge base.

    Files of either demo release are replaced or removed; any other file in ``dest`` stops the call
    (nothing is changed) unless ``force`` is set, so a mistyped path cannot wipe someone's folder.
    Files whose bytes already match are left untouched. Returns counts and the folder.
    """
    dest = _check_dest(dest)
    wanted = release_files(1)
    known = set(wanted) | set(release_files(2))
    existing = _scan(dest) if dest.exists() else {}
    foreign = sorted(p for p in existing if p not in known and not Path(p).name.startswith(".tmp-"))
    if foreign and not force:
        shown = ", ".join(foreign[:5]) + (f" (and {len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise UserError(f"{dest} holds files that are not demo documents: {shown}; nothing was changed",
                        fix="pass an empty or demo-only folder, or force=True to replace its content")
    dest.mkdir(parents=True, exist_ok=True)
    removed = []
    for path in sorted(existing):
        if path not in wanted:
            existing[path].unlink()
            removed.append(path)
    written = [path for path, src in wanted.items() if _write_if_changed(src, dest / path)]
    _remove_empty_dirs(dest)
    return {"release": 1, "dest": str(dest), "documents": len(wanted), "written": len(written),
            "removed": len(removed), "unchanged": len(wanted) - len(written)}


def apply_release2(dest: Path) -> dict[str, Any]:
    """Apply the release-2 patch to a folder holding release 1 (or release 2 already: then nothing changes).

    Returns ``{"release": 2, "dest", "edited", "removed", "added"}`` with the doc ids this call changed
    (sorted), and ``already_applied`` (True when nothing needed changing).
    """
    dest = _check_dest(dest)
    if not dest.is_dir():
        raise UserError(f"{dest} does not exist", fix="run materialise_release1(dest) first")
    changes = load_changes()
    missing = [p for p in changes["edited"] if not (dest / p).is_file()]
    if missing:
        raise UserError(f"{dest} does not hold the demo knowledge base (missing {', '.join(missing)}); "
                        "nothing was changed", fix="run materialise_release1(dest) first")
    done: dict[str, list[str]] = {kind: [] for kind in CHANGE_KINDS}
    for kind in ("edited", "added"):
        for path in changes[kind]:
            if _write_if_changed(RELEASE2_DIR / path, dest / path):
                done[kind].append(doc_id(path))
    for path in changes["removed"]:
        target = dest / path
        if target.is_file() or target.is_symlink():
            target.unlink()
            done["removed"].append(doc_id(path))
    _remove_empty_dirs(dest)
    return {"release": 2, "dest": str(dest), **done,
            "already_applied": not any(done.values())}


def detect_release(dest: Path) -> int | None:
    """1 or 2 when ``dest`` holds exactly that release's documents (bytes), else None."""
    dest = Path(dest)
    if not dest.is_dir():
        return None
    present = {p: f for p, f in _scan(dest).items() if p.endswith(DOC_SUFFIX)}
    for release in (1, 2):
        wanted = release_files(release)
        if set(present) == set(wanted) and all(present[p].read_bytes() == wanted[p].read_bytes() for p in wanted):
            return release
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.demo.data",
                                     description="Materialise the demo knowledge base into a folder.")
    parser.add_argument("action", choices=("release1", "release2", "status"),
                        help="release1: make DEST hold release 1; release2: apply the release-2 patch; "
                             "status: say which release DEST holds")
    parser.add_argument("dest", type=Path, help="the source folder (index it as acme=DEST)")
    parser.add_argument("--force", action="store_true", help="release1: replace non-demo files too")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        if args.action == "release1":
            result = materialise_release1(args.dest, force=args.force)
            text = (f"{result['dest']}: release 1, {result['documents']} documents "
                    f"({result['written']} written, {result['removed']} removed, {result['unchanged']} unchanged)")
        elif args.action == "release2":
            result = apply_release2(args.dest)
            text = (f"{result['dest']}: release 2 already applied, nothing changed" if result["already_applied"]
                    else f"{result['dest']}: release 2 applied: {len(result['edited'])} edited, "
                         f"{len(result['removed'])} removed, {len(result['added'])} added")
        else:
            release = detect_release(args.dest)
            result = {"dest": str(args.dest), "release": release}
            text = f"{args.dest}: " + (f"release {release}" if release else "not an unmodified demo release")
    except TandemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
