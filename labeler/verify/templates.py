"""Prompt templates for the verifier, shipped as text files in ``prompts/templates/``.

Templates use ``string.Template`` placeholders (``$question``) so that the JSON braces a prompt
shows the model need no escaping. ``template_hash`` covers the exact texts a verifier sends, so
editing a template invalidates every cached verdict made with the old text.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

from labeler.core.exceptions import InputError

__all__ = [
    "DEFAULT_VERIFY_MODE",
    "MODES",
    "Mode",
    "TemplateSet",
    "check_verify_mode",
    "default_question",
    "load_template_text",
    "template_set",
    "with_article",
]

Mode = Literal["crop", "marks"]
MODES: tuple[Mode, ...] = ("crop", "marks")
DEFAULT_VERIFY_MODE: Mode = "crop"


def check_verify_mode(mode: str, *, name: str = "verify mode") -> Mode:
    """``mode`` as a Mode; InputError naming ``name`` (the option or field) and the valid modes."""
    if mode not in MODES:
        raise InputError(f"{name} must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


# The id names the prompt design; bump it when a template changes meaning (the hash changes anyway).
_TEMPLATE_IDS: dict[Mode, str] = {"crop": "crop-v1", "marks": "marks-v1"}
_TEMPLATE_FILES: dict[Mode, str] = {"crop": "verify_crop.txt", "marks": "verify_marks.txt"}
_DEFAULT_QUESTION_FILE = "default_question.txt"


@cache
def load_template_text(name: str) -> str:
    """The text of ``prompts/templates/<name>``, trailing newlines removed."""
    return (
        (resources.files("prompts") / "templates" / name).read_text(encoding="utf-8").rstrip("\n")
    )


@dataclass(frozen=True)
class TemplateSet:
    """The prompt one verifier mode sends, with its provenance."""

    mode: Mode
    template_id: str
    template_hash: str  # sha256 hex of the template text(s)
    text: str

    def render_crop(self, question: str) -> str:
        """The prompt for one cropped box."""
        return string.Template(self.text).safe_substitute(question=question.strip())

    def render_marks(self, question: str, count: int) -> str:
        """The prompt for ``count`` numbered boxes (numbered from 1) drawn on one image."""
        numbers = list(range(1, count + 1))
        example = json.dumps({str(i): ("yes" if i % 2 else "no") for i in numbers[:2]})
        return string.Template(self.text).safe_substitute(
            question=question.strip(),
            count=str(count),
            numbers=", ".join(str(i) for i in numbers),
            example=example,
        )


@cache
def template_set(mode: Mode) -> TemplateSet:
    """The templates for ``mode`` ("crop" or "marks"); raises InputError for another mode."""
    mode = check_verify_mode(mode)
    text = load_template_text(_TEMPLATE_FILES[mode])
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return TemplateSet(mode=mode, template_id=_TEMPLATE_IDS[mode], template_hash=digest, text=text)


# Words whose first letter misleads the a/an rule; enough for class names, not a grammar.
_AN_EXCEPTIONS = ("hour", "honest", "honor", "honour", "heir")
_A_EXCEPTIONS = ("uni", "use", "usu", "uter", "one", "once", "eu", "ewe")
_ARTICLES = ("a ", "an ", "the ", "this ", "that ")


def with_article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front, unless it already starts with an article."""
    phrase = phrase.strip()
    lowered = phrase.lower()
    if not phrase or lowered.startswith(_ARTICLES):
        return phrase
    if lowered.startswith(_AN_EXCEPTIONS):
        return f"an {phrase}"
    if lowered.startswith(_A_EXCEPTIONS):
        return f"a {phrase}"
    return f"{'an' if lowered[0] in 'aeiou' else 'a'} {phrase}"


def default_question(phrase: str) -> str:
    """The default question for a detector phrase, e.g. "Is this an apple?"."""
    text = load_template_text(_DEFAULT_QUESTION_FILE)
    return string.Template(text).safe_substitute(a_phrase=with_article(phrase))
