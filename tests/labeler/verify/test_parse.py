"""The verifier's reply parsers: well-formed and malformed replies, none of which may raise."""

from __future__ import annotations

import math
import time

import pytest

from labeler.verify.parse import (
    MAX_REPLY_CHARS,
    ScoredToken,
    marks_yes_probs,
    normalize_token,
    parse_marks,
    parse_yes_no,
    strip_code_fences,
    yes_prob_from_logprob_positions,
    yes_prob_from_top_logprobs,
)

YES_NO_CASES = [
    # plain answers
    ("Yes", "yes"),
    ("yes", "yes"),
    ("YES", "yes"),
    ("Yes.", "yes"),
    ("yes!", "yes"),
    ("No", "no"),
    ("no.", "no"),
    ("NO", "no"),
    ("  \n no \n", "no"),
    ("Y", "yes"),
    ("n", "no"),
    ("True", "yes"),
    ("false", "no"),
    ("Yeah", "yes"),
    ("Nope.", "no"),
    # markup
    ("**Yes**", "yes"),
    ("**No**", "no"),
    ("*no*", "no"),
    ("`yes`", "yes"),
    ('"Yes"', "yes"),
    ("'no'", "no"),
    ("> Yes", "yes"),
    ("# No", "no"),
    ("[Yes]", "yes"),
    ("(no)", "no"),
    # filler before the answer
    ("I think yes", "yes"),
    ("I think yes.", "yes"),
    ("I'd say no", "no"),
    ("I\u2019d say yes", "yes"),
    ("I believe that no", "no"),
    ("Answer: yes", "yes"),
    ("answer - no", "no"),
    ("Final answer: No", "no"),
    ("The answer is yes.", "yes"),
    ("The answer is: **no**", "no"),
    ("Probably yes", "yes"),
    ("Probably not.", "no"),
    ("Not really.", "no"),
    ("Sure! Yes.", "yes"),
    ("Well, no.", "no"),
    ("Hmm... yes", "yes"),
    ("Based on the image, yes, it is a cat.", "yes"),
    # explanations after the answer do not change it
    ("Yes, there is no doubt about it.", "yes"),
    ("No, although yes-men would say otherwise.", "no"),
    ("Yes\n\nThe person is wearing glasses.", "yes"),
    ("No. The object is a dog, not a cat.", "no"),
    # answer stated later
    ("It is a cat, so the answer is yes.", "yes"),
    ("Looking closely, my answer would be no", "no"),
    ("It looks like a cat to me. Yes.", "yes"),
    ("That is a dog. No.", "no"),
    # JSON
    ('{"answer": "yes"}', "yes"),
    ('{"answer": "No"}', "no"),
    ('{"Answer": true}', "yes"),
    ('{"answer": false, "reason": "it is a dog"}', "no"),
    ('{"result": {"answer": "yes"}}', "yes"),
    ('{"is_cat": "yes"}', "yes"),
    ('"yes"', "yes"),
    ("true", "yes"),
    ("false", "no"),
    ('["no"]', "no"),
    # code fences
    ("```\nyes\n```", "yes"),
    ('```json\n{"answer": "no"}\n```', "no"),
    ('```json\n{"answer": "yes"}', "yes"),  # fence never closed
    ("Here you go:\n```\nNo\n```\nHope that helps", "no"),
    # ambiguous: both answers
    ("Yes and no", "unknown"),
    ("yes/no", "unknown"),
    ("Yes or no?", "unknown"),
    ("no or yes", "unknown"),
    ("It could be yes, it could be no", "unknown"),
    ('{"answer": "yes or no"}', "unknown"),
    # refusals and non-answers
    ("I can't tell from this image.", "unknown"),
    ("I cannot determine that.", "unknown"),
    ("I'm unable to see the image.", "unknown"),
    ("I am not sure.", "unknown"),
    ("Not sure", "unknown"),
    ("Sorry, as an AI I cannot help with that.", "unknown"),
    ("It is unclear.", "unknown"),
    ("Maybe", "unknown"),
    ("There is no doubt it is a cat", "unknown"),
    ("a cat", "unknown"),
    ("Nothing", "unknown"),
    ("nobody knows", "unknown"),
    ("yesterday", "unknown"),
    ("Noted.", "unknown"),
    # empty and garbage
    ("", "unknown"),
    ("   ", "unknown"),
    ("\n\n\t", "unknown"),
    ("...", "unknown"),
    ("```", "unknown"),
    ("``````", "unknown"),
    ("null", "unknown"),
    ("None", "unknown"),
    ("{}", "unknown"),
    ("[]", "unknown"),
    ('{"answer": null}', "unknown"),
    ('{"answer": 1}', "unknown"),
    ('{"answer": ["yes", "no"]}', "unknown"),
    ('{"answer": "ye', "unknown"),  # truncated JSON
    ('{"a": {"b": {"c": {"d": {"e": {"f": "yes"}}}}}}', "unknown"),  # too deep to trust
    ("[" * 5000 + "]" * 5000, "unknown"),
    ("12345", "unknown"),
    ("¯\\_(ツ)_/¯", "unknown"),
    ("\u0000\ufffd<|endoftext|>", "unknown"),
    ("はい", "unknown"),
    ("✅", "unknown"),
    ("Yes ✅", "yes"),
    ("Ｙｅｓ", "yes"),  # noqa: RUF001 - full-width letters are still a yes
]


@pytest.mark.parametrize(("reply", "expected"), YES_NO_CASES)
def test_parse_yes_no(reply: str, expected: str) -> None:
    assert parse_yes_no(reply) == expected


@pytest.mark.parametrize(
    "reply", [None, 1, 0, True, 3.5, ["yes"], {"answer": "yes"}, object(), b"\xff\xfe", Ellipsis]
)
def test_parse_yes_no_non_text_is_unknown_or_decoded(reply: object) -> None:
    assert parse_yes_no(reply) == "unknown"


def test_parse_yes_no_decodes_bytes() -> None:
    assert parse_yes_no(b"Yes.") == "yes"


@pytest.mark.parametrize(
    "reply",
    [
        "yes " + "x" * 2_000_000,
        "x" * 2_000_000 + " yes",
        " " * 1_000_000,
        "(" * 200_000,
        '{"answer": "' + "a" * 500_000 + '"}',
        "no " * 300_000,
    ],
    ids=["yes-then-huge", "huge-then-yes", "spaces", "parens", "huge-json", "many-no"],
)
def test_parse_yes_no_huge_replies_are_fast(reply: str) -> None:
    start = time.perf_counter()
    answer = parse_yes_no(reply)
    assert time.perf_counter() - start < 1.0
    assert answer in {"yes", "no", "unknown"}


def test_parse_yes_no_reads_only_the_start_of_huge_replies() -> None:
    assert parse_yes_no("yes " + "x" * (MAX_REPLY_CHARS * 5)) == "yes"
    # An answer beyond the parsed prefix is not seen.
    assert parse_yes_no("x " * MAX_REPLY_CHARS + "yes") == "unknown"


MARKS_CASES = [
    # JSON objects keyed by number
    ('{"1": "yes", "2": "no", "3": "yes"}', 3, ["yes", "no", "yes"]),
    ('{"2": "no", "1": "yes"}', 2, ["yes", "no"]),
    ('{"1": true, "2": false}', 2, ["yes", "no"]),
    ('{"1": "Yes.", "2": "**No**"}', 2, ["yes", "no"]),
    ('{"#1": "yes", "box 2": "no", "Box_3": "yes"}', 3, ["yes", "no", "yes"]),
    ("{1: 'yes', 2: 'no'}", 2, ["yes", "no"]),  # a Python dict, not JSON: read as lines
    ('{"1": {"answer": "no", "reason": "dog"}}', 1, ["no"]),
    # missing, extra, out of range, wrong types
    ('{"1": "yes"}', 3, ["yes", "unknown", "unknown"]),
    ('{"1": "yes", "2": "no", "7": "yes"}', 2, ["yes", "no"]),
    ('{"0": "yes", "1": "no"}', 2, ["no", "unknown"]),
    ('{"-1": "yes", "1": "no"}', 1, ["no"]),
    (
        '{"1": null, "2": 1, "3": ["yes"], "4": "maybe"}',
        4,
        ["unknown", "unknown", "yes", "unknown"],
    ),
    ('{"one": "yes", "two": "no"}', 2, ["unknown", "unknown"]),
    # wrapped objects
    ('{"answers": {"1": "yes", "2": "no"}}', 2, ["yes", "no"]),
    ('{"results": [{"id": 1, "answer": "no"}, {"id": 2, "answer": "yes"}]}', 2, ["no", "yes"]),
    # JSON lists
    ('["yes", "no", "yes"]', 3, ["yes", "no", "yes"]),
    ("[true, false]", 2, ["yes", "no"]),
    ('["yes"]', 3, ["yes", "unknown", "unknown"]),
    ('["yes", "no", "yes", "no"]', 2, ["yes", "no"]),
    ('[{"box": 2, "answer": "yes"}, {"box": 1, "answer": "no"}]', 2, ["no", "yes"]),
    ('[{"number": "1", "verdict": true}]', 1, ["yes"]),
    ("[1, 0]", 2, ["unknown", "unknown"]),
    # lines
    ("1: yes\n2: no\n3: yes", 3, ["yes", "no", "yes"]),
    ("1. Yes\n2. No", 2, ["yes", "no"]),
    ("Box 1 - yes\nBox 2 - no", 2, ["yes", "no"]),
    ("#1: **Yes**\n#2: **No**", 2, ["yes", "no"]),
    ("1) no, it is a dog\n2) yes", 2, ["no", "yes"]),
    ("1 -> yes, 2 -> no", 2, ["yes", "no"]),
    ("Here are my answers:\n1: yes\n2: no\nThanks!", 2, ["yes", "no"]),
    ("1: yes\n1: no", 1, ["unknown"]),  # contradicting itself
    ("1: yes\n1: yes", 1, ["yes"]),
    # fences and prose around JSON
    ('```json\n{"1": "yes", "2": "no"}\n```', 2, ["yes", "no"]),
    ('```\n{"1": "no"}', 1, ["no"]),
    ('Sure! Here is the JSON: {"1": "yes", "2": "no"} Let me know.', 2, ["yes", "no"]),
    # truncated JSON
    ('{"1": "yes", "2": "no", "3": "y', 3, ["yes", "no", "unknown"]),
    ('{"1": "yes", "2": "n', 2, ["yes", "unknown"]),
    ('{"1": "yes", "2"', 2, ["yes", "unknown"]),
    ('{"1": "ye', 1, ["unknown"]),
    ("[", 2, ["unknown", "unknown"]),
    # single-box replies
    ("yes", 1, ["yes"]),
    ("**No.**", 1, ["no"]),
    ("yes", 2, ["unknown", "unknown"]),
    # garbage
    ("", 2, ["unknown", "unknown"]),
    ("   ", 1, ["unknown"]),
    ("null", 2, ["unknown", "unknown"]),
    ("{}", 2, ["unknown", "unknown"]),
    ("I cannot see any boxes.", 2, ["unknown", "unknown"]),
    ("¯\\_(ツ)_/¯", 1, ["unknown"]),
    ("[" * 5000, 2, ["unknown", "unknown"]),
    ('{"1": ' * 3000, 2, ["unknown", "unknown"]),
]


@pytest.mark.parametrize(("reply", "n", "expected"), MARKS_CASES)
def test_parse_marks(reply: str, n: int, expected: list[str]) -> None:
    assert parse_marks(reply, n) == expected


@pytest.mark.parametrize("reply", [None, 7, {"1": "yes"}, ["yes"], object()])
def test_parse_marks_non_text_is_all_unknown(reply: object) -> None:
    assert parse_marks(reply, 2) == ["unknown", "unknown"]


@pytest.mark.parametrize("n", [0, -1, True, 2.0, None])
def test_parse_marks_bad_count_gives_no_answers(n: object) -> None:
    assert parse_marks('{"1": "yes"}', n) == []  # type: ignore[arg-type]


def test_parse_marks_huge_reply_is_fast() -> None:
    reply = "\n".join(f"{i}: {'yes' if i % 2 else 'no'}" for i in range(1, 20)) + "x" * 2_000_000
    start = time.perf_counter()
    answers = parse_marks(reply, 20)
    assert time.perf_counter() - start < 1.0
    assert answers[:3] == ["yes", "no", "yes"]
    assert answers[19] == "unknown"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```json\n{}\n```", "{}"),
        ("```\nyes\n```", "yes"),
        ("no fence", "no fence"),
        ("```python\nprint()", "print()"),
        ("before ```x``` after", "x"),
    ],
)
def test_strip_code_fences(text: str, expected: str) -> None:
    assert strip_code_fences(text) == expected


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("Yes", "yes"),
        (" yes", "yes"),
        ("Ġyes", "yes"),
        ("▁No", "no"),
        ("yes.", "yes"),
        ("**No", "no"),
        ('"yes"', "yes"),
        ("\nNo\n", "no"),
        ("", ""),
        (None, ""),
        (3, ""),
    ],
)
def test_normalize_token(token: object, expected: str) -> None:
    assert normalize_token(token) == expected


def _lp(prob: float) -> float:
    return math.log(prob)


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ([("Yes", _lp(0.9)), ("No", _lp(0.1))], 0.9),
        ([("No", _lp(0.6)), ("Yes", _lp(0.2))], 0.25),
        # variants of the same word add up; other tokens are ignored
        ([("Yes", _lp(0.5)), (" yes", _lp(0.1)), ("No", _lp(0.2)), ("Maybe", _lp(0.2))], 0.75),
        ([("YES.", _lp(0.3)), ("Ġno", _lp(0.1)), ("▁No", _lp(0.1))], 0.6),
        ([("Yes", _lp(0.97))], 1.0),
        ([("no", _lp(0.97))], 0.0),
        ([("Yes", 0.0), ("No", float("-inf"))], 1.0),
    ],
)
def test_yes_prob_from_top_logprobs(top: list[tuple[str, float]], expected: float) -> None:
    assert yes_prob_from_top_logprobs(top) == pytest.approx(expected)


@pytest.mark.parametrize(
    "top",
    [
        [],
        [("Maybe", _lp(0.9)), ("The", _lp(0.1))],
        [("Yes", float("nan")), ("No", float("-inf"))],
        [("Yes", 5.0)],  # a positive log-probability is not a probability
        [("Yes", "high"), ("No", None)],
        [("Yes", True)],
        [(None, -0.1), (7, -0.2)],
    ],
)
def test_yes_prob_from_top_logprobs_without_usable_mass(top: list[tuple[object, object]]) -> None:
    assert yes_prob_from_top_logprobs(top) is None


@pytest.mark.parametrize("top", [None, 5, "Yes", [("Yes",)], [1, 2]])
def test_yes_prob_from_top_logprobs_malformed_input(top: object) -> None:
    assert yes_prob_from_top_logprobs(top) is None  # type: ignore[arg-type]


def test_yes_prob_uses_the_first_position_that_mentions_an_answer() -> None:
    positions = [
        [("**", _lp(0.99))],
        [("No", _lp(0.8)), ("Yes", _lp(0.2))],
        [("Yes", _lp(0.99))],
    ]
    assert yes_prob_from_logprob_positions(positions) == pytest.approx(0.2)
    assert yes_prob_from_logprob_positions([[("**", 0.0)]]) is None
    assert yes_prob_from_logprob_positions([]) is None


# --- marks mode: each box's P(yes) from its answer token -----------------------------------------


def _sure(word: str) -> list[tuple[object, object]]:
    return [(word, math.log(0.99))]


def _answer(word: str, yes: float) -> ScoredToken:
    """An answer token whose alternatives put ``yes`` on yes (as " yes" and "Yes") and the rest
    on no."""
    return (
        word,
        [(" yes", math.log(yes * 0.6)), ("Yes", math.log(yes * 0.4)), (" no", math.log(1 - yes))],
    )


def _tokens(*parts: str | ScoredToken) -> list[ScoredToken]:
    return [part if isinstance(part, tuple) else (part, _sure(part)) for part in parts]


def test_marks_yes_probs_reads_each_box_from_its_answer_token() -> None:
    tokens = _tokens(
        '{"', "1", '":', ' "', _answer("yes", 0.8), '",', ' "', "2", '":', ' "',
        _answer("no", 0.25), '",', ' "', "3", '":', ' "', _answer("yes", 0.6), '"}',
    )  # fmt: skip
    text = "".join(t for t, _ in tokens)
    answers = parse_marks(text, 3)
    assert answers == ["yes", "no", "yes"]
    assert marks_yes_probs(tokens, answers) == pytest.approx([0.8, 0.25, 0.6])


def test_marks_yes_probs_reads_lines_and_tokens_that_carry_their_space() -> None:
    tokens = _tokens("1", ":", _answer(" Yes", 0.9), "\n", "2", ":", _answer(" No", 0.3))
    answers = parse_marks("".join(t for t, _ in tokens), 2)
    assert marks_yes_probs(tokens, answers) == pytest.approx([0.9, 0.3])


def test_marks_yes_probs_leaves_out_what_it_cannot_trust() -> None:
    # Box 1 answered twice; box 2's word split over two tokens ("y" + "es"); box 3 not answered;
    # box 4's token has no yes/no alternatives.
    tokens = _tokens(
        "1", ":", _answer(" yes", 0.9), "\n", "1", ":", _answer(" yes", 0.7), "\n",
        "2", ":", " y", "es", "\n", "4", ":", (" no", [("<unk>", math.log(0.5))]),
    )  # fmt: skip
    answers = parse_marks("".join(t for t, _ in tokens), 4)
    assert answers == ["yes", "yes", "unknown", "no"]
    assert marks_yes_probs(tokens, answers) == [None, None, None, None]


def test_marks_yes_probs_needs_the_parsers_agreement() -> None:
    # The JSON says yes for box 1; prose after it says "1: no". The parser trusts the JSON and
    # the two mentions disagree, so no token speaks for box 1.
    tokens = _tokens(
        '{"', "1", '":', ' "', _answer("yes", 0.8), '"}', " 1", ":", _answer(" no", 0.4)
    )
    answers = parse_marks("".join(t for t, _ in tokens), 1)
    assert marks_yes_probs(tokens, answers) == [None]


@pytest.mark.parametrize(
    "tokens",
    [[], [(None, None)], [("1: yes", None)], [("1: yes", [("yes", "x")])], [(3, [])]],
)
def test_marks_yes_probs_never_raises(tokens: list[ScoredToken]) -> None:
    assert marks_yes_probs(tokens, ["yes"]) == [None]
