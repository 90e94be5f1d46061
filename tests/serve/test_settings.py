"""One settings class per stage, and the verifiers a service offers, each with its own server
and key."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from distill.settings import TrainSettings
from labeler.core.exceptions import InputError, ModelLoadError
from labeler.pipeline import LabelConfig
from labeler.settings import LabelSettings
from serve.settings import ServiceSettings, VerifierEntry


def test_each_stage_reads_its_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTLABEL_CONCURRENCY", "3")
    monkeypatch.setenv("PROMPTLABEL_PROMOTE_TOLERANCE", "0.01")
    monkeypatch.setenv("PROMPTLABEL_DATA_DIR", "/srv/promptlabel")
    label, train, service = LabelSettings(), TrainSettings(), ServiceSettings()
    assert label.concurrency == 3 and not hasattr(label, "data_dir")
    assert train.promote_tolerance == 0.01 and not hasattr(train, "concurrency")
    # The service runs every stage.
    assert (service.concurrency, service.promote_tolerance) == (3, 0.01)
    assert str(service.data_dir) == "/srv/promptlabel"
    assert LabelSettings.model_fields.keys() <= ServiceSettings.model_fields.keys()
    assert TrainSettings.model_fields.keys() <= ServiceSettings.model_fields.keys()


def test_the_label_settings_defaults_are_the_librarys() -> None:
    settings = LabelSettings()
    config = {f.name: f.default for f in dataclasses.fields(LabelConfig)}
    for name in ("verify_mode", "concurrency", "request_timeout_s", "max_retries"):
        assert getattr(settings, name) == config[name], name
    assert settings.val_fraction == config["val_fraction"]
    assert settings.max_image_pixels == config["max_image_pixels"]


def test_verifier_entries_are_a_spec_or_a_spec_with_its_own_server_and_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_KEY", "sk-local")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = ServiceSettings(
        service_verifiers={
            "none": "none",
            "plain": "openai:gpt-4o-mini",
            "local": {
                "spec": "openai:Qwen2-VL",
                "url": "http://vllm:8000/v1",
                "api_key_env": "VLLM_KEY",
            },
        },
        service_verifier_url="http://shared:8000/v1",
    )
    assert settings.service_verifiers["plain"] == VerifierEntry(spec="openai:gpt-4o-mini")
    local = settings.resolve_verifier("local")
    assert (local.spec, local.url, local.api_key) == (
        "openai:Qwen2-VL",
        "http://vllm:8000/v1",
        "sk-local",
    )
    assert "sk-local" not in repr(local)
    # No URL of its own: the shared one; no key variable: the backend's own (OPENAI_API_KEY).
    plain = settings.resolve_verifier("plain")
    assert (plain.url, plain.api_key) == ("http://shared:8000/v1", None)
    settings.check_verifier_keys()

    monkeypatch.delenv("VLLM_KEY")
    with pytest.raises(InputError, match=r"verifier 'local': its key variable VLLM_KEY is not set"):
        settings.check_verifier_keys()
    with pytest.raises(ModelLoadError, match="VLLM_KEY"):
        settings.resolve_verifier("local")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("openia:gpt-4o-mini", "unknown verifier 'openia:gpt-4o-mini'"),
        ({"spec": "openai"}, "needs a model name"),
        ({"spec": "openai:m", "key": "K"}, "key: Extra inputs are not permitted"),
        ({"url": "http://vllm:8000/v1"}, "spec: Field required"),
        ({"spec": "openai:m", "url": "vllm:8000"}, "url must be an http(s) URL"),
        ({"spec": "none", "url": "http://vllm:8000/v1"}, "takes no url or api_key_env"),
        ({"spec": "transformers:/models/vlm", "api_key_env": "K"}, "takes no url or api_key_env"),
        ({"spec": "openai:m", "api_key_env": "sk-proj-secret"}, "not the key"),
        (42, "Input should be a valid dictionary"),
    ],
)
def test_a_bad_verifier_entry_is_refused_when_settings_load_naming_it(
    entry: object, problem: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        ServiceSettings(service_verifiers={"none": "none", "vlm": entry})
    [error] = caught.value.errors()
    assert error["loc"] == ("service_verifiers",)
    assert "'vlm': " in error["msg"] and problem in error["msg"], error["msg"]
    assert "sk-proj-secret" not in str(caught.value)  # a key pasted by mistake is not echoed


def test_verifier_entries_come_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "PROMPTLABEL_SERVICE_VERIFIERS",
        '{"none": "none", "local": {"spec": "openai:Qwen2-VL", "url": "http://vllm:8000/v1",'
        ' "api_key_env": "VLLM_KEY"}, "hosted": {"spec": "openai:gpt-4o-mini",'
        ' "api_key_env": "OPENAI_API_KEY"}}',
    )
    entries = ServiceSettings().service_verifiers
    assert sorted(entries) == ["hosted", "local", "none"]
    assert entries["local"].url == "http://vllm:8000/v1"
    assert entries["hosted"] == VerifierEntry(
        spec="openai:gpt-4o-mini", api_key_env="OPENAI_API_KEY"
    )
