"""Turning a reference ("champion", "base", an alias, "v3" or "3") into a local adapter to serve or score."""

from __future__ import annotations

from tandem import tracking
from tandem.config import Settings
from tandem.errors import ServiceUnavailable, UserError
from tandem.registry.history import base_by_choice
from tandem.registry.versions import (ALIASES, CHAMPION, LIST_FIX, ResolvedAdapter, base_ref, by_alias, client,
                                      download_version, get_version, is_failed, version_number)


def resolve(settings: Settings, ref: str | None = "champion", *, download: bool = True,
            check_base: bool = True) -> ResolvedAdapter:
    """Turn ``ref`` ("champion", "base", an alias, or a version number) into a local adapter.

    "champion" with no champion yet means the base model. An unknown version or alias, a version tagged
    failed, or one trained on another base than the configured one raises ``UserError``.
    """
    text = "champion" if ref is None else str(ref).strip()
    text = version_number(text) or text
    if text in ("", "base", "none"):
        base, sha = base_ref(settings)
        return ResolvedAdapter(ref=text or "base", version=None, path=None, base_sha256=sha, base_model=base)
    cl = client(settings)
    if text.isdigit():
        mv = get_version(cl, text)
    elif text in ALIASES:
        mv = by_alias(cl, text)
        if mv is None:
            if text == CHAMPION:
                base, sha = base_ref(settings)
                return ResolvedAdapter(ref=text, version=None, path=None, base_sha256=sha, base_model=base,
                                       base_by_choice=base_by_choice(cl))
            raise UserError(f"no adapter version has the alias {text!r}", fix=LIST_FIX)
    else:
        raise UserError(f"unknown adapter reference {text!r}",
                        fix="use a version number, 'champion', 'challenger', 'previous' or 'base'; " + LIST_FIX)
    if is_failed(mv):
        raise UserError(f"adapter version {mv.version} is tagged failed and cannot be served",
                        fix="pick another version; " + LIST_FIX)
    recorded_sha = mv.tags.get(tracking.tag("base_model_sha256"), "")
    recorded_base = mv.tags.get(tracking.tag("base_model"), "")
    if check_base:
        _, configured_sha = base_ref(settings)
        if recorded_sha and recorded_sha != configured_sha:
            message = (f"adapter version {mv.version} was trained on base model {recorded_base} (sha256 "
                       f"{recorded_sha[:12]}), but the configured base model {settings.base_model} has sha256 "
                       f"{configured_sha[:12]}")
            if text in ALIASES:  # the deployment's state, not the caller's choice: the service cannot answer
                raise ServiceUnavailable(f"the {text} {message}",
                                         fix=f"set TANDEM_BASE_MODEL to {recorded_base}, or move the {text} alias to "
                                             f"a version trained on the configured base (`tandem adapters promote "
                                             f"VERSION`); {LIST_FIX}")
            raise UserError(message, fix=f"set TANDEM_BASE_MODEL to {recorded_base}, or use the base model alone "
                                         "(--adapter base)")
    path = download_version(settings, cl, mv) if download else None
    return ResolvedAdapter(ref=text, version=str(mv.version), path=path, base_sha256=recorded_sha,
                           base_model=recorded_base, aliases=tuple(sorted(getattr(mv, "aliases", []) or [])),
                           tags=dict(mv.tags))
