"""Pure parsers of verifier replies. None of them raises, whatever the model wrote.

``parse_yes_no`` reads one yes/no answer, ``parse_marks`` reads numbered answers for marks mode,
``yes_prob_from_top_logprobs`` turns the top log-probabilities of an answer token into a
calibrated P(yes), and ``marks_yes_probs`` finds each box's answer token in a marks reply. Anything
unclear becomes "unknown" (or no probability): a wrong "yes" costs more than a review.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

__all__ = [
    "Answer",
    "ScoredToken",
    "marks_yes_probs",
    "normalize_token",
    "parse_marks",
    "parse_yes_no",
    "strip_code_fences",
    "yes_prob_from_logprob_positions",
    "yes_prob_from_top_logprobs",
]

Answer = Literal["yes", "no", "unknown"]

ScoredToken = tuple[str, Sequence[tuple[object, object]]]
"""One generated token: its text and its top alternatives as (token, logprob) pairs."""

# Replies longer than this are cut before parsing: an answer is at the start, and regexes over
# megabytes of garbage would only cost time.
MAX_REPLY_CHARS = 20_000

_YES_WORDS = frozenset({"yes", "yeah", "yep", "yup", "true", "correct", "affirmative", "y"})
_NO_WORDS = frozenset({"no", "nope", "nah", "false", "incorrect", "negative", "n"})
# Single letters count only when they are the whole reply ("Y", "n.").
_LETTER_WORDS = frozenset({"y", "n"})

_FENCE = re.compile(r"```(?:[ \t]*[A-Za-z0-9_+-]*[ \t]*\n)?(.*?)(?:```|$)", re.DOTALL)
_MARKUP = re.compile(r"[*_`#>~\"“”«»\[\]()]")
# Filler a model puts before its answer: "Answer:", "I think", "Final answer -", ...
_PREFIX = re.compile(
    r"^(?:"
    r"(?:final\s+)?answer\s*(?:is)?"
    r"|i\s+(?:think|believe|would\s+say|'d\s+say)(?:\s+(?:that|it\s+is|it's))?"
    r"|i\s+am\s+(?:fairly\s+|quite\s+)?(?:sure|confident)(?:\s+that)?"
    r"|(?:probably|likely|definitely|certainly|clearly|well|so|hmm+|ok(?:ay)?|sure)"
    r"|based\s+on\s+the\s+image"
    r"|(?:the\s+)?(?:short\s+)?answer\s+is"
    r")\b[\s,.:;=!\-]*",
    re.IGNORECASE,
)
_LEADING_PUNCTUATION = re.compile(r"^[\W_]+", re.UNICODE)
_ECHO = re.compile(r"\byes\s*(?:/|or|and|,)\s*no\b|\bno\s*(?:/|or|and|,)\s*yes\b", re.IGNORECASE)
_ANSWER_IS = re.compile(
    r"\banswer\s*(?:is|would\s+be|:|=)\s*[:\s\"'*]*(yes|no)\b", re.IGNORECASE | re.DOTALL
)
_REFUSAL = re.compile(
    r"\b(?:i\s+(?:can(?:no|')?t|am\s+unable|'m\s+unable|am\s+not\s+able|'m\s+not\s+able)"
    r"|cannot\s+(?:determine|tell|see|say|answer|verify)"
    r"|unable\s+to|not\s+(?:sure|certain|possible\s+to)|unclear|impossible\s+to"
    r"|as\s+an\s+ai|sorry)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_ANSWER_KEYS = ("answer", "result", "label", "verdict", "response", "output", "value")


def strip_code_fences(text: str) -> str:
    """The content of the first Markdown code fence, or ``text`` unchanged when it has none.

    A fence that is opened but never closed (a truncated reply) yields everything after it.
    """
    match = _FENCE.search(text)
    return match.group(1).strip() if match else text


def _as_text(reply: object) -> str | None:
    """The first MAX_REPLY_CHARS of a text (or UTF-8 bytes) reply, NFKC-normalised (full-width
    letters read as ASCII); None for anything else."""
    if isinstance(reply, bytes | bytearray):
        reply = bytes(reply[:MAX_REPLY_CHARS]).decode("utf-8", errors="replace")
    if not isinstance(reply, str):
        return None
    return unicodedata.normalize("NFKC", reply[:MAX_REPLY_CHARS])


def _answer_from_json(value: object, depth: int = 0) -> Answer | None:
    """The answer a decoded JSON value carries, or None when it carries no answer."""
    if depth > 4:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        answer = _parse_plain(value)
        return answer if answer != "unknown" else None
    if isinstance(value, Mapping):
        lowered = {str(k).strip().lower(): v for k, v in value.items()}
        for key in _ANSWER_KEYS:
            if key in lowered:
                return _answer_from_json(lowered[key], depth + 1)
        if len(lowered) == 1:
            return _answer_from_json(next(iter(lowered.values())), depth + 1)
        return None
    if isinstance(value, list) and len(value) == 1:
        return _answer_from_json(value[0], depth + 1)
    return None


def _try_json(text: str) -> tuple[bool, object]:
    """(True, value) when ``text`` is a JSON document, else (False, None)."""
    stripped = text.strip()
    if not stripped or stripped[0] not in '{["tfn-0123456789':
        return False, None
    try:
        return True, json.loads(stripped)
    except (ValueError, RecursionError):
        return False, None


def _leading_word(text: str) -> str | None:
    """The first word after filler such as "Answer:" or "I think", lower-cased."""
    text = _LEADING_PUNCTUATION.sub("", text)
    for _ in range(8):  # a few filler phrases at most; the bound keeps garbage cheap
        shorter = _LEADING_PUNCTUATION.sub("", _PREFIX.sub("", text, count=1))
        if shorter == text:
            break
        text = shorter
    match = _WORD.match(text)
    return match.group(0).lower() if match else None


def _parse_plain(text: str) -> Answer:
    cleaned = _MARKUP.sub(" ", text.replace("\u2019", "'")).strip()
    if not cleaned:
        return "unknown"
    words = [w.lower() for w in _WORD.findall(cleaned)]
    if len(words) == 1 and words[0] in _LETTER_WORDS:
        return "yes" if words[0] == "y" else "no"
    # "Yes or no?", "yes/no": the model echoed the instruction or hedged.
    echo = _ECHO.search(cleaned)
    if echo is not None and echo.start() <= 3:
        return "unknown"
    lead = _leading_word(cleaned)
    if lead in _YES_WORDS - _LETTER_WORDS:
        return "yes"
    if lead in _NO_WORDS - _LETTER_WORDS:
        return "no"
    if lead == "not" and not _REFUSAL.search(cleaned):
        return "no"  # "Not really", "Probably not."
    said = _ANSWER_IS.search(cleaned)
    if said is not None:
        return "yes" if said.group(1).lower() == "yes" else "no"
    if _REFUSAL.search(cleaned):
        return "unknown"
    # No answer up front: accept a lone "yes" or "no" anywhere, but never both.
    remaining = _ECHO.sub(" ", cleaned)
    found = {w.lower() for w in _WORD.findall(remaining)} & {"yes", "no"}
    if found == {"yes"}:
        return "yes"
    if found == {"no"} and re.search(r"\bno\b\s*[.!]?\s*$", remaining, re.IGNORECASE):
        # "no" inside a sentence ("there is no doubt") is not an answer; only a final "no" is.
        return "no"
    return "unknown"


def parse_yes_no(reply: object) -> Answer:
    """Read a yes/no answer from a model reply; "unknown" when there is none or it is ambiguous.

    Accepts "Yes", "no.", "**No**", "I think yes", "Answer: yes", JSON such as
    ``{"answer": "yes"}`` or ``true``, and any of these inside a code fence. Refusals, empty or
    non-text replies and replies that say both yes and no give "unknown". Never raises.
    """
    text = _as_text(reply)
    if text is None:
        return "unknown"
    text = strip_code_fences(text).strip()
    is_json, value = _try_json(text)
    if is_json:
        answer = _answer_from_json(value)
        return answer if answer is not None else "unknown"
    return _parse_plain(text)


# --- marks mode ---------------------------------------------------------------------------------

_NUMBERED = re.compile(
    r"(?:box|mark|object|region|#|no\.?)?\s*#?\s*[\"']?(\d{1,4})[\"']?\s*(?:[:=)\].,\-–]|->|=>)\s*"  # noqa: RUF001
    r"[\"'*\s]*([A-Za-z]+)",
    re.IGNORECASE,
)
_MAX_JSON_STARTS = 16
_KEY_NUMBER = re.compile(r"^\D{0,12}?(\d{1,4})\D{0,3}$")


def _key_to_index(key: object, n: int) -> int | None:
    """0-based box index for a key such as "1", 1, "#2", "box 3"; None when out of range."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        number = key
    elif isinstance(key, str):
        if "-" in key:
            return None  # "-1" is no box number
        match = _KEY_NUMBER.match(key.strip())
        if match is None:
            return None
        number = int(match.group(1))
    else:
        return None
    return number - 1 if 1 <= number <= n else None


def _record(answers: list[Answer | None], index: int | None, answer: Answer | None) -> None:
    if index is None or answer is None:
        return
    current = answers[index]
    # The same box answered twice, differently: trust neither.
    answers[index] = answer if current is None or current == answer else "unknown"


def _marks_from_json(value: object, n: int, depth: int = 0) -> list[Answer | None] | None:
    """Numbered answers in a decoded JSON value, or None when it does not look like marks."""
    if depth > 3:
        return None
    answers: list[Answer | None] = [None] * n
    if isinstance(value, Mapping):
        numbered = {k: v for k, v in value.items() if _key_to_index(k, n) is not None}
        if numbered:
            for key, item in numbered.items():
                _record(answers, _key_to_index(key, n), _answer_from_json(item))
            return answers
        # {"answers": {...}} or {"boxes": [...]}: one level of wrapping.
        for item in value.values():
            if isinstance(item, Mapping | list):
                nested = _marks_from_json(item, n, depth + 1)
                if nested is not None:
                    return nested
        return None
    if isinstance(value, list):
        if all(isinstance(item, Mapping) for item in value) and value:
            for item in value:
                assert isinstance(item, Mapping)
                lowered = {str(k).strip().lower(): v for k, v in item.items()}
                key = next(
                    (lowered[k] for k in ("id", "box", "number", "mark", "index") if k in lowered),
                    None,
                )
                _record(answers, _key_to_index(key, n), _answer_from_json(lowered))
            return answers
        for position, item in enumerate(value[:n]):
            _record(answers, position, _answer_from_json(item))
        return answers
    return None


def _first_json_container(text: str) -> object | None:
    """The first decodable JSON object or array inside ``text`` (models add prose around it)."""
    decoder = json.JSONDecoder()
    # A few candidates are enough; trying every bracket of "[[[[..." would be quadratic.
    for match in itertools.islice(re.finditer(r"[{\[]", text), _MAX_JSON_STARTS):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict | list):
            return value
    return None


def parse_marks(reply: object, n: int) -> list[Answer]:
    """Answers for boxes numbered 1..n, in box order; missing or unreadable entries are "unknown".

    Accepts ``{"1": "yes", "2": "no"}`` (keys may read "#1" or "box 1", values may be booleans or
    ``{"answer": ...}``), a JSON list in box order, ``[{"id": 1, "answer": "yes"}]``, lines such as
    "1: yes" or "Box 2 - no", code fences and truncated JSON. Numbers outside 1..n are ignored.
    Never raises.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return []
    text = _as_text(reply)
    if text is None:
        return ["unknown"] * n
    text = strip_code_fences(text).strip()
    answers: list[Answer | None] | None = None
    is_json, value = _try_json(text)
    if is_json:
        answers = _marks_from_json(value, n)
    if answers is None:
        container = _first_json_container(text)
        if container is not None:
            answers = _marks_from_json(container, n)
    if answers is None or all(a is None for a in answers):
        # Lines such as "1: yes", or JSON cut off mid-way ('{"1": "yes", "2": "n').
        answers = [None] * n
        for match in _NUMBERED.finditer(text):
            word = match.group(2).lower()
            if word in _LETTER_WORDS and match.end() == len(text):
                continue  # '"2": "n' is a reply cut off mid-word, not an answer
            answer: Answer | None = (
                "yes" if word in _YES_WORDS else "no" if word in _NO_WORDS else None
            )
            _record(answers, _key_to_index(match.group(1), n), answer)
    if n == 1 and answers[0] is None:
        # One box: a plain "Yes." answers it.
        single = parse_yes_no(text)
        answers[0] = single if single != "unknown" else None
    return [a if a is not None else "unknown" for a in answers]


# --- log-probabilities --------------------------------------------------------------------------

_TOKEN_JUNK = re.compile(r"^[\sĠ▁Ċ*_`\"'.,:;!?()\[\]{}<>]+|[\sĠ▁Ċ*_`\"'.,:;!?()\[\]{}<>]+$")


def normalize_token(token: object) -> str:
    """A token as a bare lower-case word: " Yes" -> "yes", "Ġno" -> "no", "yes." -> "yes"."""
    if not isinstance(token, str):
        return ""
    return _TOKEN_JUNK.sub("", token).lower()


def yes_prob_from_top_logprobs(top_logprobs: Iterable[tuple[object, object]]) -> float | None:
    """P(yes) = yes mass / (yes mass + no mass) over one token position's top log-probabilities.

    ``top_logprobs`` holds (token, logprob) pairs; tokens that normalise to "yes" or "no" are
    summed ("Yes", " yes", "YES."). None when neither appears or the numbers are unusable.
    """
    yes_mass = 0.0
    no_mass = 0.0
    try:
        for token, logprob in top_logprobs:
            if not isinstance(logprob, int | float) or isinstance(logprob, bool):
                continue
            if math.isnan(logprob) or logprob > 1e-6:
                continue
            word = normalize_token(token)
            if word == "yes":
                yes_mass += math.exp(logprob)
            elif word == "no":
                no_mass += math.exp(logprob)
    except (TypeError, ValueError):
        return None
    total = yes_mass + no_mass
    if total <= 0.0 or not math.isfinite(total):
        return None
    return yes_mass / total


def yes_prob_from_logprob_positions(
    positions: Sequence[Iterable[tuple[object, object]]],
) -> float | None:
    """P(yes) at the first token position whose top log-probabilities mention yes or no.

    Models sometimes open with markup ("**", a code fence) before the answer word, so the first
    position that carries yes/no mass is the answer token. None when no position does.
    """
    for top in positions:
        prob = yes_prob_from_top_logprobs(top)
        if prob is not None:
            return prob
    return None


def marks_yes_probs(tokens: Sequence[ScoredToken], answers: Sequence[Answer]) -> list[float | None]:
    """P(yes) for each box of a marks reply, from the alternatives of its answer token.

    ``tokens`` is the reply as generated, ``answers`` what ``parse_marks`` read from it. The reply
    is rebuilt from the token texts and its numbered answers ("1": "yes", 2: no) are located; a box
    gets the calibrated P(yes) of the token where its answer word starts when it was answered
    exactly once, in agreement with ``answers``, and that token's alternatives hold yes/no mass.
    Otherwise None, and the caller keeps the parsed answer's 1.0 or 0.0. Never raises.
    """
    n = len(answers)
    probs: list[float | None] = [None] * n
    starts: list[int] = []
    texts: list[str] = []
    length = 0
    for text, _ in tokens:
        text = text if isinstance(text, str) else ""
        starts.append(length)
        texts.append(text)
        length += len(text)
        if length > MAX_REPLY_CHARS:
            break
    hits: dict[int, list[tuple[Answer, int]]] = {}
    for match in _NUMBERED.finditer("".join(texts)):
        index = _key_to_index(match.group(1), n)
        word = match.group(2).lower()
        answer: Answer | None = "yes" if word in _YES_WORDS else "no" if word in _NO_WORDS else None
        if index is not None and answer is not None:
            hits.setdefault(index, []).append((answer, match.start(2)))
    for index, found in hits.items():
        if len(found) != 1 or found[0][0] != answers[index]:
            continue  # answered twice, or not what the parser read: no score to trust
        position = bisect.bisect_right(starts, found[0][1]) - 1
        probs[index] = yes_prob_from_top_logprobs(tokens[position][1])
    return probs
