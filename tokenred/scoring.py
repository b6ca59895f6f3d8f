"""Answer-letter extraction and accuracy helpers (pure functions).

Two parsers are provided. :func:`extract_letter_paper` reproduces the STTM code's
``extract_characters_regex`` including its quirks (two prefix pairs fused by missing
commas; the first allowed capital *anywhere*, so "Because" reads as "B").
:func:`extract_letter` is the default: it strips the same answer phrases, prefers a
letter standing on its own, skips letters inside words and the article "A", and
falls back to matching an option's text when the answer has no letter at all.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

LETTERS = "ABCDEFGHIJ"

PAPER_PREFIXES: tuple[str, ...] = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
    "Answer:",
    "Option:",
    "The correct answer",
    "The correct option",
)
"""The prefix list of the reference parser, with its two fused pairs kept."""

_PREFIXES = re.compile(
    r"^(?:the\s+)?(?:best|correct|final|right)?\s*(?:answer|option|choice)"
    r"(?:\s+(?:is|would\s+be|should\s+be))?\s*[:：\-]?\s*",
    re.IGNORECASE,
)
_ONLY = re.compile(r"^[\W_]*([A-Za-z])[\W_]*$")
_LEADING = re.compile(r"^[\s*\"'`(\[]*([A-Z])\s*[.):\]]")
_CUE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|would\s+be|should\s+be|:|=)?\s*"
    r"(?:option\s*)?[\s*\"'`(\[]*([A-Z])(?![A-Za-z'])",
    re.IGNORECASE,
)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
_ARTICLE_NEXT = re.compile(r"\s+([a-z]+)")
_VERBS = frozenset({"is", "was", "seems", "would", "appears", "and", "or", "fits"})


def option_letters(n: int) -> str:
    """Return the first ``n`` option letters, e.g. ``"ABCD"`` for 4."""
    if not 1 <= n <= len(LETTERS):
        msg = f"expected 1..{len(LETTERS)} options, got {n}"
        raise ValueError(msg)
    return LETTERS[:n]


def letter_list(letters: str) -> str:
    """Return the paper's letter list, e.g. ``"(A, B, C, or D)"``."""
    if len(letters) == 1:
        return f"({letters})"
    head = ", ".join(letters[:-1])
    return f"({head}, or {letters[-1]})"


def extract_letter_paper(text: str, letters: str = "ABCD") -> str:
    """Reproduce the reference parser; return ``""`` when it finds nothing.

    Steps: strip, delete every prefix string, give up on texts of more than 10
    words without an allowed capital, then return the first allowed capital letter
    anywhere in the string (even inside a word).
    """
    s = text.strip()
    for prefix in PAPER_PREFIXES:
        s = s.replace(prefix, "")
    allowed = f"[{letters}]"
    if len(s.split()) > 10 and not re.search(allowed, s):
        return ""
    match = re.search(allowed, s)
    return match.group(0) if match else ""


def extract_letter(
    text: str, letters: str = "ABCD", options: Sequence[str] | None = None
) -> str | None:
    """Return the option letter an answer text names, or None.

    Order of evidence: a lone letter ("B", "(B)", "**B**"); a leading letter with a
    delimiter ("B. Candles", "C)"); a letter after an answer cue ("the answer is
    (C)"); the first letter standing alone, not inside a word and not the article
    "A" ("I pick D here"); finally the one option whose text the answer contains.

    Args:
        text: The model's generated text.
        letters: The allowed letters, e.g. ``"ABCDE"``.
        options: Option texts (without letters) for the text-match fallback.
    """
    s = text.strip()
    if not s:
        return None
    for candidate in (s, _PREFIXES.sub("", s, count=1).strip()):
        only = _ONLY.match(candidate)
        if only and only.group(1).upper() in letters:
            return only.group(1).upper()
        lead = _LEADING.match(candidate)
        if lead and lead.group(1) in letters:
            return lead.group(1)
    for cue in _CUE.finditer(s):
        letter = cue.group(1)
        # Lower-case letters only count right after an explicit cue and alone.
        if letter.upper() in letters and (letter.isupper() or _alone(s, cue.end(1))):
            return letter.upper()
    for m in _STANDALONE.finditer(s):
        if m.group(1) in letters and not _is_article(s, m):
            return m.group(1)
    if options:
        return _match_option(s, letters, options)
    return None


def _alone(s: str, end: int) -> bool:
    rest = s[end:].lstrip()
    return rest == "" or rest[0] in ".):]"


def _is_article(s: str, m: re.Match[str]) -> bool:
    if m.group(1) != "A":
        return False
    nxt = _ARTICLE_NEXT.match(s, m.end(1))
    return nxt is not None and nxt.group(1) not in _VERBS


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def _match_option(s: str, letters: str, options: Sequence[str]) -> str | None:
    """Return the letter of the one option text found in ``s``, if unambiguous.

    An option contained in another found option ("red" in "red square") does not
    count against it; two unrelated options found means no answer.
    """
    text = f" {_norm(s)} "
    found = {
        i: o
        for i, o in enumerate(_norm(o) for o in options)
        if o and i < len(letters) and f" {o} " in text
    }
    maximal = [
        i
        for i, o in found.items()
        if not any(o != p and f" {o} " in f" {p} " for p in found.values())
    ]
    return letters[maximal[0]] if len(maximal) == 1 else None


def accuracy(rows: Sequence[Mapping[str, Any]]) -> float:
    """Return 100 * mean(correct) over ``rows`` (NaN for no rows)."""
    if not rows:
        return math.nan
    return 100.0 * sum(bool(r.get("correct")) for r in rows) / len(rows)


def grouped_accuracy(
    rows: Sequence[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any]
) -> dict[str, float]:
    """Return accuracy per group; rows whose key is None are skipped."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        k = key(r)
        if k is not None:
            groups[str(k)].append(r)
    return {k: accuracy(v) for k, v in sorted(groups.items())}


def all_correct_accuracy(
    rows: Sequence[Mapping[str, Any]], group: Callable[[Mapping[str, Any]], Any]
) -> float:
    """Return 100 * share of groups whose every row is correct (VNBench's rule)."""
    ok: dict[Any, bool] = {}
    for r in rows:
        g = group(r)
        ok[g] = ok.get(g, True) and bool(r.get("correct"))
    if not ok:
        return math.nan
    return 100.0 * sum(ok.values()) / len(ok)


def mean(values: Sequence[float]) -> float:
    """Return the arithmetic mean (NaN for no values)."""
    return sum(values) / len(values) if values else math.nan


def slug(text: str) -> str:
    """Return a metric-name-safe lower_snake version of ``text``."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "unknown"


def meta_of(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return a row's ``meta`` mapping (empty when missing)."""
    meta = row.get("meta")
    return meta if isinstance(meta, Mapping) else {}
