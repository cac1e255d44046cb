"""Source roots: local paths through fsspec, remote ones through Airflow's ``ObjectStoragePath`` (``s3://``, ``gs://``...).

A source is configured as ``name=path_or_uri`` or just ``path_or_uri`` (the name is then the root's basename).
A document's stable id is ``<source name>/<relative posix path>``: the same on every machine and mount point.
Its URI is the normalised full URI (``file:///abs/path/file.md``, ``s3://bucket/prefix/file.md``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Iterator

from wcmatch import glob

from tandem.errors import UserError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    root: str  # normalised root URI without a trailing slash
    spec: str  # as configured

    @property
    def is_local(self) -> bool:
        return self.root.startswith("file://")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file found under a source root (not read yet)."""

    doc_id: str
    source: str
    uri: str
    size: int
    problem: str | None = None  # set when the entry cannot be a document (broken symlink, not a file)


def _normalise_root(text: str) -> str:
    text = text.strip()
    if _SCHEME.match(text):
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        if scheme == "file":
            return "file://" + os.path.normpath("/" + rest.lstrip("/"))
        rest = rest.rstrip("/")
        return f"{scheme}://{rest}"
    return "file://" + os.path.normpath(os.path.abspath(os.path.expanduser(text)))


def parse_source(spec: str) -> Source:
    """``name=path_or_uri`` or ``path_or_uri``."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("empty source", fix="give a path or URI, optionally as name=path_or_uri")
    spec = spec.strip()
    name = None
    head, sep, tail = spec.partition("=")
    if sep and "/" not in head and ":" not in head:
        name, location = head.strip(), tail.strip()
    else:
        location = spec
    if not location:
        raise UserError(f"source {spec!r} has no path", fix="write it as name=path_or_uri or just a path")
    root = _normalise_root(location)
    if name is None:
        name = root.rstrip("/").rsplit("/", 1)[-1]
    if not _NAME.match(name or ""):
        raise UserError(f"source name {name!r} (from {spec!r}) is not a valid name",
                        fix="name the source explicitly: name=path_or_uri (letters, digits, . _ -)")
    return Source(name=name, root=root, spec=spec)


def parse_sources(specs: Iterable[str]) -> list[Source]:
    sources = [parse_source(s) for s in specs]
    if not sources:
        raise UserError("no knowledge sources configured", fix="set TANDEM_SOURCES or pass --source PATH_OR_URI")
    seen: dict[str, Source] = {}
    for src in sources:
        if src.name in seen:
            raise UserError(f"two sources have the name {src.name!r}: {seen[src.name].spec!r} and {src.spec!r}",
                            fix="name them explicitly: name1=path1, name2=path2")
        seen[src.name] = src
    return sorted(sources, key=lambda s: s.name)


# wcmatch's globs: `**` spans zero or more folders (GLOBSTAR), `*` and `**` match dot-names too (DOTGLOB),
# a pattern starting with `!` excludes what it matches (NEGATE), as in `**/*.md,!drafts/**`, and braces
# expand (BRACE): `**/*.{md,rst}`.
_GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.NEGATE | glob.BRACE


def glob_match(rel_path: str, pattern: str) -> bool:
    """Match a relative posix path against one glob."""
    return glob.globmatch(rel_path, pattern, flags=_GLOB_FLAGS)


def selected(rel_path: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """Selected by the include globs (which may hold `!` exclusions) and by none of the exclude globs."""
    include, exclude = list(include), list(exclude)
    if not any(not p.startswith("!") for p in include):
        include.append("**")  # only exclusions given: they apply to everything
    return glob.globmatch(rel_path, include, flags=_GLOB_FLAGS) and not (
        exclude and glob.globmatch(rel_path, exclude, flags=_GLOB_FLAGS))


def filesystem(uri: str):
    """The fsspec filesystem of a URI. Local paths use fsspec's own local filesystem: no Airflow import (about
    2 s) for a run that reads only local files. Other schemes go through Airflow's ``ObjectStoragePath``, which
    brings the Airflow connection's credentials."""
    if uri.startswith("file://"):
        import fsspec

        return fsspec.filesystem("file")
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri).fs


def _root(source: Source) -> tuple[object, str]:
    """(filesystem, path of the root in it)."""
    if source.is_local:
        return filesystem(source.root), source.root[len("file://"):]
    from airflow.sdk import ObjectStoragePath

    root = ObjectStoragePath(source.root)
    return root.fs, root.path.rstrip("/")


def _check_root(source: Source, fs, base: str) -> None:
    try:
        exists = fs.exists(base)
        is_dir = exists and fs.isdir(base)
    except Exception as exc:  # noqa: BLE001 - any storage error reaching the root is a clear run failure
        raise UserError(f"source {source.name!r}: cannot reach {source.root}: {exc}",
                        fix="check the path/URI, the credentials (Airflow connection) and that the provider is installed") from None
    if not exists:
        raise UserError(f"source {source.name!r}: root {source.root} does not exist",
                        fix="mount or create it, or fix TANDEM_SOURCES / --source (nothing was changed)")
    if not is_dir:
        raise UserError(f"source {source.name!r}: root {source.root} is not a folder",
                        fix="point the source at a folder of documents")


def list_entries(source: Source, include: Iterable[str], exclude: Iterable[str]) -> Iterator[Entry]:
    """The selected files under a source root, sorted by doc id."""
    include, exclude = tuple(include), tuple(exclude)
    fs, base = _root(source)
    if not source.is_local:  # fsspec caches listings per filesystem instance: a scan must see the bucket now
        fs.invalidate_cache(base)
    _check_root(source, fs, base)
    found = fs.find(base, withdirs=False, detail=True)
    rows = []
    for full, info in found.items():
        full = full.rstrip("/")
        if not full.startswith(base + "/"):
            continue
        rel = full[len(base) + 1:]
        if not selected(rel, include, exclude):
            continue
        problem = None
        kind = info.get("type")
        if info.get("islink") and kind != "file":
            problem = f"broken symlink (points to {info.get('destination', '?')})"
        elif kind not in ("file", None):
            problem = f"not a regular file ({kind})"
        rows.append(Entry(doc_id=f"{source.name}/{rel}", source=source.name,
                          uri=f"{source.root}/{rel}", size=int(info.get("size") or 0), problem=problem))
    rows.sort(key=lambda e: e.doc_id)
    return iter(rows)


class Reader:
    """Reads documents by URI, through one filesystem per storage root and connection.

    A remote URI may name its Airflow connection in its user part (``s3://aws_docs@bucket/key``). The cache is
    keyed by scheme, connection and bucket, so two roots with different connections never share a filesystem,
    and so never share credentials.
    """

    def __init__(self):
        self._fs: dict[tuple[str, str, str], object] = {}

    def _locate(self, uri: str) -> tuple[object, str]:
        """(filesystem, path in it) of a URI."""
        if uri.startswith("file://"):
            key = ("file", "", "")
            if key not in self._fs:
                self._fs[key] = filesystem(uri)
            return self._fs[key], uri[len("file://"):]
        from airflow.sdk import ObjectStoragePath

        path = ObjectStoragePath(uri)
        key = (path.protocol, path.conn_id or "", path.bucket if hasattr(path, "bucket") else "")
        if key not in self._fs:
            self._fs[key] = path.fs
        return self._fs[key], path.path

    def read(self, uri: str, max_bytes: int) -> bytes:
        """The file's bytes; raises ``OSError`` subclasses or ``FileTooLarge``."""
        fs, path = self._locate(uri)
        if not uri.startswith("file://"):
            # a listing cached earlier in this process holds the object's old ETag, and s3fs would refuse the
            # newer object (412): read what the store holds now
            fs.invalidate_cache(path)
        with fs.open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise FileTooLarge(f"larger than the limit of {max_bytes} bytes (TANDEM_MAX_FILE_BYTES)")
        return data


class FileTooLarge(Exception):
    pass
