"""Text matching shared by the scorers and the faithfulness checks: one normalisation, one word-bounded match."""

from __future__ import annotations

import re
import unicodedata

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TRAILING = re.compile(r"[\s.!?;:,]+$")


def normalize(text: str) -> str:
    """Case-folded, NFKC, plain quotes, no thousands separators, single spaces, no trailing punctuation."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()
    text = _DIGIT_COMMA.sub("", text)
    text = " ".join(text.split())
    return _TRAILING.sub("", text)


def contains(haystack: str, needle: str) -> bool:
    """Whether the normalized ``needle`` occurs in the normalized ``haystack`` at word boundaries."""
    h, n = normalize(haystack), normalize(needle)
    if not n:
        return True
    pattern = (r"(?<!\w)" if n[0].isalnum() else "") + re.escape(n) + (r"(?!\w)" if n[-1].isalnum() else "")
    return re.search(pattern, h) is not None
