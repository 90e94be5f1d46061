"""Ontology files: which classes to label, what the detector looks for, what the verifier asks.

Long form::

    classes:
      - name: glasses_person
        detect: person
        verify: Is this person wearing glasses on their face?
      - name: forklift
        detect: [forklift, pallet jack]
        verify: false

Short form: ``classes: {truck: truck, person: "a person"}`` (class name to detector phrase).
Every problem is reported with the file, the line and the field before any model loads.

A phrase may repeat across classes (never within one): an attribute class such as
``glasses_person`` detects ``person`` next to a plain ``person`` class, and every box the phrase
finds is proposed for both, each then checked with its own question.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from labeler.core.exceptions import OntologyError

__all__ = ["Ontology", "OntologyClass", "load_ontology", "ontology_from_data", "parse_ontology"]

MAX_CLASSES = 256
MAX_PHRASE_CHARS = 256


def _refuse_unprintable(text: str) -> None:
    # Names and phrases end up in every dataset file and prompt; a NUL, an escape sequence or an
    # invisible character there is a mistake (and PostgreSQL refuses NUL in text).
    unprintable = next((char for char in text if not char.isprintable() and char != " "), None)
    if unprintable is not None:
        raise ValueError(f"must not hold control or invisible characters (found {unprintable!r})")


class OntologyClass(BaseModel):
    """One class: the label written to the dataset, detector phrases and the verifier question."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1, max_length=MAX_PHRASE_CHARS)
    detect: tuple[str, ...] = Field(min_length=1, max_length=32)
    # None: use the default question template; False: detector only for this class.
    verify: str | bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _phrases_as_tuple(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("detect"), str):
            values = {**values, "detect": (values["detect"],)}
        elif isinstance(values, dict) and isinstance(values.get("detect"), list):
            values = {**values, "detect": tuple(values["detect"])}
        return values

    @field_validator("name")
    @classmethod
    def _name_is_a_label(cls, name: str) -> str:
        if not name.strip() or name != name.strip():
            raise ValueError("must be non-empty with no leading or trailing spaces")
        _refuse_unprintable(name)
        return name

    @field_validator("detect")
    @classmethod
    def _phrases_not_empty(cls, phrases: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(p.strip() for p in phrases)
        if any(not p for p in cleaned):
            raise ValueError("phrases must not be empty")
        if any(len(p) > MAX_PHRASE_CHARS for p in cleaned):
            raise ValueError(f"phrases must be at most {MAX_PHRASE_CHARS} characters")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("phrases must not repeat")
        for phrase in cleaned:
            _refuse_unprintable(phrase)
        return cleaned

    @field_validator("verify")
    @classmethod
    def _verify_is_question_or_false(cls, verify: str | bool | None) -> str | bool | None:
        if verify is True:
            raise ValueError("use a question, false, or leave it out (True is not a question)")
        if isinstance(verify, str) and not verify.strip():
            raise ValueError("the question must not be empty (use false to skip verification)")
        if isinstance(verify, str):
            _refuse_unprintable(verify.replace("\n", " ").replace("\t", " "))
        return verify.strip() if isinstance(verify, str) else verify

    @property
    def verify_enabled(self) -> bool:
        return self.verify is not False

    @property
    def question(self) -> str | None:
        """The explicit question, or None when the default template should be used."""
        return self.verify if isinstance(self.verify, str) else None


class _OntologyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    classes: list[OntologyClass] = Field(min_length=1, max_length=MAX_CLASSES)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("classes"), dict):
            values = {
                **values,
                "classes": [{"name": k, "detect": v} for k, v in values["classes"].items()],
            }
        return values


@dataclass(frozen=True)
class Ontology:
    """Validated classes in file order; ``class_id`` is the index into ``classes``."""

    classes: tuple[OntologyClass, ...]
    source: str = "<memory>"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def phrases(self) -> list[str]:
        """Every detector phrase, in class order (a class may own several)."""
        return [p for c in self.classes for p in c.detect]

    @property
    def phrase_class_ids(self) -> list[int]:
        """For each entry of ``phrases``, the class it belongs to."""
        return [i for i, c in enumerate(self.classes) for _ in c.detect]

    @property
    def distinct_phrases(self) -> list[str]:
        """Each detector phrase once, in order of first use: what the detector is asked about.

        Classes may share a phrase (``glasses_person`` and ``person`` both detecting ``person``).
        """
        return list(dict.fromkeys(self.phrases))

    @property
    def distinct_phrase_class_ids(self) -> list[tuple[int, ...]]:
        """For each entry of ``distinct_phrases``, every class that detects it (ascending)."""
        class_ids: dict[str, list[int]] = {}
        for phrase, class_id in zip(self.phrases, self.phrase_class_ids, strict=True):
            class_ids.setdefault(phrase, []).append(class_id)
        return [tuple(ids) for ids in class_ids.values()]

    @classmethod
    def from_mapping(cls, mapping: dict[str, str | list[str]]) -> Ontology:
        """Build an ontology in code, short form: class name to phrase(s)."""
        return ontology_from_data({"classes": mapping}, source="<memory>")


def _node_at(
    root: yaml.Node | None, loc: tuple[int | str, ...], *, key_node: bool = False
) -> yaml.Node | None:
    """The YAML node a pydantic error location points at (as deep as the file has it).

    With ``key_node`` the last mapping step returns the key rather than its value (for unknown
    keys).
    """
    node = root
    for depth, key in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            match = next(
                (
                    k if key_node and depth == len(loc) - 1 else v
                    for k, v in node.value
                    if getattr(k, "value", None) == key
                ),
                None,
            )
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                break
            node = node.value[key]
        else:
            break
    return node


def _describe(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for key in loc:
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif key in {"function-after[_name_is_a_label()]", "tuple[str, ...]"} or "[" in key:
            continue
        else:
            parts.append(("." if parts else "") + key)
    return "".join(parts) or "file"


def parse_ontology(text: str, *, source: str = "<string>") -> Ontology:
    """Validate ontology YAML text; raises OntologyError naming the source, line and field."""
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise OntologyError(
            f"{source}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    return _validated(raw, root, source)


def ontology_from_data(raw: Any, *, source: str) -> Ontology:
    """Validate an ontology given as data (decoded JSON, long or short form): the checks and
    messages of an ontology file, without line numbers."""
    return _validated(raw, None, source)


def _validated(raw: Any, root: yaml.Node | None, source: str) -> Ontology:
    """The ontology in ``raw``; errors name the line of ``root`` (the YAML it came from) when
    there is one."""
    if not isinstance(raw, dict):
        raise OntologyError(f"{source}: expected a mapping with a 'classes' key")
    try:
        parsed = _OntologyFile.model_validate(raw)
    except ValidationError as exc:
        # A misspelt key usually causes the "field required" error beside it: report it first.
        errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
        first = errors[0]
        loc = tuple(first["loc"])
        node = _node_at(root, loc, key_node=first["type"] == "extra_forbidden")
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise OntologyError(f"{source}{line}: {_describe(loc)}: {message}{more}") from None
    names = [c.name for c in parsed.classes]
    for i, name in enumerate(names):
        if name in names[:i]:
            node = (
                _node_at(root, ("classes", i, "name")) if isinstance(raw["classes"], list) else None
            )
            line = f":{node.start_mark.line + 1}" if node is not None else ""
            raise OntologyError(f"{source}{line}: classes[{i}].name: duplicate class name {name!r}")
    return Ontology(classes=tuple(parsed.classes), source=source)


def load_ontology(path: str | Path) -> Ontology:
    """Read and validate an ontology YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OntologyError(f"{path}: ontology file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OntologyError(f"{path}: cannot read ontology file ({exc})") from None
    return parse_ontology(text, source=str(path))
