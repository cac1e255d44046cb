"""Input checks of the answer path, shared by `tandem ask` and the HTTP API.

Each check raises ``UserError`` naming the input and the fix (the CLI exits 2, the API answers 4xx);
nothing is loaded or queried before the input is known to be good.
"""

from __future__ import annotations

import re

from tandem.config import Settings
from tandem.errors import UserError

# "champion" (default), "base", an alias, or a version number ("3" or "v3").
ADAPTER_REF = re.compile(r"^(champion|challenger|previous|base|v?[0-9]{1,9})$")
_SURROGATE = re.compile("[\ud800-\udfff]")
ADAPTER_REF_HELP = "a version number (e.g. 3), 'champion', 'challenger', 'previous' or 'base'"


def question(settings: Settings, text: object) -> str:
    """The question, stripped; empty, non-text or overlong questions are refused."""
    if not isinstance(text, str):
        raise UserError("the question must be text", fix="send the question as a JSON string")
    cleaned = text.strip()
    if not cleaned:
        raise UserError("the question is empty", fix="ask a question, e.g. `tandem ask \"What does the Pro plan cost?\"`")
    limit = settings.ask_max_question_chars
    if len(cleaned) > limit:
        raise UserError(f"the question is {len(cleaned)} characters long; the limit is {limit}",
                        fix=f"shorten the question (or raise TANDEM_ASK_MAX_QUESTION_CHARS above {limit})")
    if "\x00" in cleaned:
        raise UserError("the question contains a NUL character", fix="remove control characters from the question")
    if _SURROGATE.search(cleaned):  # valid JSON ("\\ud800"), but not text: it cannot be encoded, stored or traced
        raise UserError("the question contains an unpaired surrogate (a \\ud800-\\udfff escape), which is not text",
                        fix="send the question as valid Unicode: a surrogate escape only in a high+low pair")
    return cleaned


def k(settings: Settings, value: object) -> int:
    """The number of chunks to retrieve: an integer in 1..ask_max_k."""
    limit = settings.ask_max_k
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"k must be an integer, got {value!r}", fix=f"use a whole number between 1 and {limit}")
    if not 1 <= value <= limit:
        raise UserError(f"k={value} is out of range", fix=f"use a k between 1 and {limit} (TANDEM_ASK_MAX_K)")
    return value


def adapter(value: object) -> str:
    """The adapter reference, normalised ("v3" -> "3"); None means the champion."""
    if value is None:
        return "champion"
    if not isinstance(value, str):
        raise UserError(f"adapter must be text, got {value!r}", fix=f"use {ADAPTER_REF_HELP}")
    text = value.strip().lower()
    if not ADAPTER_REF.match(text):
        raise UserError(f"unknown adapter reference {value!r}",
                        fix=f"use {ADAPTER_REF_HELP}; list the versions with `tandem adapters list`")
    from tandem.registry.versions import version_number

    text = version_number(text) or text
    if text.isdigit():
        if text == "0":
            raise UserError("adapter version 0 does not exist (versions start at 1)",
                            fix="list the versions with `tandem adapters list`")
    return text
