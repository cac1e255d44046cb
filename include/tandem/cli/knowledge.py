"""Knowledge verbs: ``reindex``, ``search``, ``index status|releases|rollback|verify``."""

from __future__ import annotations

import sys

from tandem.cli import emit
from tandem.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("reindex", help="incrementally reindex the knowledge sources into pgvector")
    p.add_argument("--source", action="append", metavar="PATH_OR_URI", dest="sources",
                   help="a source root (name=path_or_uri or path_or_uri); repeatable; overrides TANDEM_SOURCES")
    p.add_argument("--full", action="store_true", help="re-embed every document (the diff is ignored)")
    p.add_argument("--dry-run", action="store_true", help="report the plan (counts and ids per class); write nothing")
    p.add_argument("--allow-mass-delete", action="store_true",
                   help="allow deleting more than TANDEM_MASS_DELETE_FRACTION of the documents")
    p.add_argument("--wait", type=int, metavar="SECONDS", default=None,
                   help="wait this long for another running reindex (default TANDEM_LOCK_WAIT_SECONDS)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("search", help="hybrid search (vector + keyword, reciprocal-rank fusion) of the live index")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5, help="number of hits (default 5)")
    p.add_argument("--mode", choices=("hybrid", "vector", "keyword"), default="hybrid")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="metadata filter: source, doc_id, doc_id_prefix, title, format (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("index", help="the knowledge index: status, releases, rollback, verify")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    isub.required = True
    r = isub.add_parser("rollback", help="serve the previous published release again (same or previous embedding "
                                         "space); repeat to step further back")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_rollback)
    r = isub.add_parser("releases", help="the releases: run, counts, canary figures, which one is live")
    r.add_argument("--limit", type=int, default=20, help="newest N releases (default 20)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_releases)
    r = isub.add_parser("verify", help="check that the published index matches its sources (exit 1 on drift)")
    r.add_argument("--repair", action="store_true",
                   help="re-index exactly the drifted documents as a new release, then verify again")
    r.add_argument("--source", action="append", metavar="PATH_OR_URI", dest="sources",
                   help="source roots to compare with (default TANDEM_SOURCES)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_verify)
    s = isub.add_parser("status", help="index version, counts, last run, quarantine, canary history")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)


def _settings(**changes):
    from tandem.config import Settings

    settings = Settings.load()
    return settings.replace(**changes) if changes else settings


def _restore_cli_logging(args) -> None:
    """Importing Airflow (ObjectStoragePath) points the root logger at stdout at INFO level; the CLI keeps stdout
    for its result (``--json`` must stay parseable) and logs to stderr at its own level."""
    import logging

    import airflow.sdk  # noqa: F401 - the import that reconfigures logging, done now so it can be undone

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING)


def cmd_reindex(args) -> int:
    from tandem.knowledge import reindex, sources, summary

    changes = {}
    if args.wait is not None:
        if args.wait < 0:
            raise UserError(f"--wait must be >= 0, got {args.wait}", fix="give seconds, for example --wait 600")
        changes["lock_wait_seconds"] = args.wait
    settings = _settings(**changes)
    if not all(src.is_local for src in sources.parse_sources(args.sources or settings.sources)):
        _restore_cli_logging(args)  # a remote source imports Airflow, which reconfigures logging
    result = reindex.run(settings, sources=args.sources, full=args.full, dry_run=args.dry_run,
                         allow_mass_delete=args.allow_mass_delete, progress=sys.stderr.isatty() or not args.json)
    emit(result, args.json, summary.text(result))
    return 0


def _filters(items: list[str]) -> dict | None:
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad filter {item!r}", fix="write filters as FIELD=VALUE, for example --filter source=acme")
        key = key.strip()
        if key in out:
            out[key] = (out[key] if isinstance(out[key], list) else [out[key]]) + [value]
        else:
            out[key] = value
    return out or None


def cmd_search(args) -> int:
    from tandem.knowledge.search import search

    hits = search(_settings(), args.query, k=args.k, filters=_filters(args.filter), mode=args.mode)
    if args.json:
        emit([h.to_dict() for h in hits], True)
        return 0
    if not hits:
        print("no hits")
    for i, h in enumerate(hits, start=1):
        where = f" > {h.heading_path}" if h.heading_path else ""
        print(f"{i}. {h.title}{where}  [score {h.score:.4f}, similarity {h.vector_similarity:.3f}]")
        print(f"   {h.uri}  ({h.doc_id})")
        print(f"   {h.snippet}")
    return 0


def cmd_rollback(args) -> int:
    from tandem.airflow import events
    from tandem.knowledge import reindex

    settings = _settings()
    result = reindex.rollback(settings)
    problem = events.emit_knowledge_event(settings, {"index_version": result["index_version"], "action": "rollback",
                                                     "rolled_back_index_version": result["rolled_back_index_version"]})
    result["asset_event"] = "recorded" if problem is None else f"not recorded: {problem}"
    if problem is not None:
        print(f"warning: the index was rolled back, but the knowledge_index asset event was not recorded: {problem}",
              file=sys.stderr)
    where = (f" in the previous embedding space {result['space']} (fingerprint {result['fingerprint']})"
             if result["space_changed"] else "")
    emit(result, args.json, f"rolled back: release {result['index_version']} is live{where}; release "
                            f"{result['rolled_back_index_version']} was rolled back")
    return 0


def cmd_releases(args) -> int:
    from tandem import db
    from tandem.knowledge import releases, store

    if args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}", fix="for example --limit 20")
    settings = _settings()
    with db.connection(settings.db_url) as conn:
        rows = releases.listing(conn, store.names(settings.index_name), args.limit)
    if args.json:
        emit(rows, True)
        return 0
    if not rows:
        print("no releases yet: run `tandem reindex`")
        return 0
    table = [["release", "status", "space", "run", "new", "changed", "deleted", "canary", "hit@k", "MRR", "published"]]
    for r in rows:
        c, k = r["canary"], r["counts"]
        table.append([f"{r['index_version']}{' *' if r['live'] else ''}", r["status"], r["space"], r["run_id"],
                      k.get("new", "-"), k.get("changed", "-"), k.get("deleted", "-"), c.get("status", "-"),
                      c.get("hit_at_k", "-"), c.get("mrr", "-"), (r["published_at"] or "-")[:19]])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print("(* = live)")
    return 0


def cmd_verify(args) -> int:
    from tandem.knowledge import sources, verify

    settings = _settings()
    if not all(src.is_local for src in sources.parse_sources(args.sources or settings.sources)):
        _restore_cli_logging(args)
    report = verify.verify(settings, repair=args.repair, sources=args.sources,
                           progress=sys.stderr.isatty() and not args.json)
    emit(report, args.json, verify.text(report))
    return 0 if report["ok"] else 1


def cmd_status(args) -> int:
    from tandem.knowledge.status import index_status

    st = index_status(_settings())
    if args.json:
        emit(st, True)
        return 0
    lines = [f"index {st['index']!r}: release {st['index_version'] or '(nothing published yet)'}",
             f"  documents {st['documents']} . chunks {st['chunks']} . failed {st['failed_documents']} . "
             f"quarantined {len(st['quarantined'])}"]
    for key in ("live", "previous", "building"):
        sp = st.get(key)
        if sp:
            lines.append(f"  {key}: space {sp['no']} fingerprint {sp['fingerprint']} ({sp['table']}, {sp['dim']}-d)")
    if st["last_run"]:
        lr = st["last_run"]
        lines.append(f"  last run {lr['run_id']}: {lr['status']} ({lr['mode']}) finished {lr['finished_at']}")
    if st["running"]:
        lines.append(f"  running now: {st['running']['owner']} since {st['running']['since']}")
    for q in st["quarantined"]:
        lines.append(f"  quarantined {q['doc_id']}: {q['reason']} ({q['attempts']} attempts)")
    for c in st["canary_history"][:5]:
        lines.append(f"  canary {c['run_id']}: {c['status']} hit@{c['k']} {c['hit_at_k']} MRR {c['mrr']}")
    v = st["last_verify"]
    if v:
        drift = ", ".join(f"{k} {c}" for k, c in v["drift"].items() if c) or "no drift"
        lines.append(f"  last verify (release {v['index_version']}, {v['finished_at'][:19]}): "
                     f"{'consistent' if v['ok'] else 'DRIFT'} ({drift})")
    else:
        lines.append("  last verify: never (`tandem index verify`)")
    print("\n".join(lines))
    return 0
