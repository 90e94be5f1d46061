from __future__ import annotations

from pathlib import Path

import pytest

from labeler.core.exceptions import OntologyError
from labeler.ontology import Ontology, load_ontology, parse_ontology

PROMPTS = Path(__file__).resolve().parents[2] / "prompts" / "ontologies"


def test_long_form_from_issue() -> None:
    ontology = load_ontology(PROMPTS / "warehouse.yaml")
    assert ontology.names == ["glasses_person", "truck", "forklift"]
    assert ontology.phrases == ["person", "truck", "forklift", "pallet jack"]
    assert ontology.phrase_class_ids == [0, 1, 2, 2]
    glasses, truck, forklift = ontology.classes
    assert glasses.question == "Is this person wearing glasses on their face?"
    assert truck.question is None and truck.verify_enabled
    assert not forklift.verify_enabled


def test_short_form() -> None:
    ontology = parse_ontology('classes: {truck: truck, person: "a person"}')
    assert ontology.names == ["truck", "person"]
    assert ontology.phrases == ["truck", "a person"]
    assert all(c.verify_enabled and c.question is None for c in ontology.classes)


def test_from_mapping_matches_short_form() -> None:
    assert (
        Ontology.from_mapping({"truck": "truck"}).classes
        == parse_ontology("classes: {truck: truck}").classes
    )


def test_classes_may_share_a_phrase_which_is_asked_about_once() -> None:
    ontology = parse_ontology(
        "classes:\n"
        "  - {name: person, detect: person}\n"
        "  - {name: glasses_person, detect: ' person', verify: 'Is this person wearing glasses?'}\n"
        "  - {name: worker, detect: [helmet, person]}\n"
        "  - {name: truck, detect: truck}\n"
    )
    assert ontology.phrases == ["person", "person", "helmet", "person", "truck"]
    assert ontology.phrase_class_ids == [0, 1, 2, 2, 3]
    assert ontology.distinct_phrases == ["person", "helmet", "truck"]
    assert ontology.distinct_phrase_class_ids == [(0, 1, 2), (2,), (3,)]


def test_distinct_phrases_without_sharing_are_the_phrases() -> None:
    ontology = load_ontology(PROMPTS / "warehouse.yaml")
    assert ontology.distinct_phrases == ontology.phrases
    assert ontology.distinct_phrase_class_ids == [(0,), (1,), (2,), (2,)]


def test_phrases_are_stripped() -> None:
    ontology = parse_ontology("classes:\n  - name: a\n    detect: ['  dog ']\n")
    assert ontology.phrases == ["dog"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "expected a mapping"),
        ("- a\n- b\n", "expected a mapping"),
        ("classes: [\n", "not valid YAML"),
        ("classes: []\n", "<string>:1: classes:"),
        ("clases:\n  - name: a\n    detect: a\n", "<string>:1: clases: unknown key"),
        (
            "classes:\n  - name: a\n    detect: a\n  - name: a\n    detect: b\n",
            "<string>:4: classes[1].name: duplicate class name 'a'",
        ),
        ("classes:\n  - name: a\n    detect: ''\n", "<string>:3: classes[0].detect"),
        ("classes:\n  - name: a\n    detect: []\n", "<string>:3: classes[0].detect"),
        ("classes:\n  - name: a\n    detect: [x, '']\n", "phrases must not be empty"),
        ("classes:\n  - name: a\n    detect: [x, x]\n", "phrases must not repeat"),
        ("classes:\n  - name: a\n", "<string>:2: classes[0].detect: Field required"),
        ("classes:\n  - detect: a\n", "classes[0].name: Field required"),
        (
            "classes:\n  - name: a\n    detect: a\n    colour: red\n",
            "<string>:4: classes[0].colour: unknown key",
        ),
        ("classes:\n  - name: 3\n    detect: a\n", "<string>:2: classes[0].name"),
        ("classes:\n  - name: a\n    detect: 5\n", "<string>:3: classes[0].detect"),
        ("classes:\n  - name: a\n    detect: a\n    verify: true\n", "True is not a question"),
        ("classes:\n  - name: a\n    detect: a\n    verify: '  '\n", "must not be empty"),
        ("classes:\n  - name: ' a'\n    detect: a\n", "leading or trailing spaces"),
        ("classes: {a: ''}\n", "phrases must not be empty"),
        ("classes: {a: [x, 3]}\n", "classes[0].detect"),
        ("classes: 7\n", "classes"),
    ],
)
def test_invalid_ontologies_name_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(OntologyError) as caught:
        parse_ontology(text)
    assert expected in str(caught.value)


def test_huge_ontology_rejected() -> None:
    classes = "\n".join(f"  - {{name: c{i}, detect: thing {i}}}" for i in range(300))
    with pytest.raises(OntologyError, match="classes"):
        parse_ontology("classes:\n" + classes)


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(OntologyError, match=r"nope\.yaml: ontology file not found"):
        load_ontology(tmp_path / "nope.yaml")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("classes:\n  - name: a\n    detect: a\n    colour: red\n")
    with pytest.raises(OntologyError, match=rf"{path}:4: classes\[0\].colour: unknown key"):
        load_ontology(path)
