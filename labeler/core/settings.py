"""What every stage's settings share: ``PROMPTLABEL_*`` variables, and the cache they all use.

Each stage has its own class: ``labeler.settings.LabelSettings``,
``distill.settings.TrainSettings`` and ``serve.settings.ServiceSettings`` (which runs every stage,
so it has the others' fields too). Each is read through its own cached getter, when a command
runs, never when a module is imported.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PromptlabelSettings"]


class PromptlabelSettings(BaseSettings):
    """The base of each stage's settings; variables of the other stages are ignored."""

    # Errors leave the values out: a database URL holds a password, and a key may be pasted where
    # the name of its variable belongs.
    model_config = SettingsConfigDict(
        env_prefix="PROMPTLABEL_", extra="ignore", hide_input_in_errors=True
    )

    # Downloaded checkpoints (``weights/``) and the demo's tiny models.
    cache_dir: Path = Path.home() / ".cache" / "promptlabel"
