"""Which frames a device keeps as hard cases: a collection policy, its decision, rate limits and
near-duplicate suppression. Base install only (numpy, Pillow, PyYAML, pydantic).

A policy YAML file (every key optional; the defaults: the band ``"*": [0.25, 0.5]``, rate limits
6 a minute, 60 an hour, 500 a day, near-duplicates at distance 6 skipped, nothing else)::

    confidence_band: {person: [0.25, 0.5], "*": [0.3, 0.45]}   # per class; "*" for the rest
    min_detections: 1        # fewer boxes than this is a reason
    max_detections: 30       # more boxes than this is a reason
    sample_rate: 0.01        # keep this fraction of the other frames at random
    rate_limits: {per_minute: 6, per_hour: 60, per_day: 500}
    duplicate_distance: 6    # dHash Hamming distance at or below which a frame is a near-duplicate
    duplicate_window: 64     # how many recent kept hashes to compare with
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labeler.core.exceptions import InputError

__all__ = [
    "DEFAULT_CONFIDENCE_BAND",
    "CollectionPolicy",
    "Collector",
    "RateLimiter",
    "dhash",
    "hamming",
    "load_policy",
    "policy_reasons",
]

WINDOWS_S = {"per_minute": 60.0, "per_hour": 3600.0, "per_day": 86400.0}


class RateLimits(BaseModel):
    """At most this many frames per window (None: no limit). The defaults bound a camera at
    30 fps to a few frames a minute and 500 a day: what a labeling round can take."""

    model_config = ConfigDict(extra="forbid")
    per_minute: int | None = Field(default=6, ge=0)
    per_hour: int | None = Field(default=60, ge=0)
    per_day: int | None = Field(default=500, ge=0)


# The default: a box the student scored just above the reporting threshold (0.25) and below an
# even chance is one it is unsure of, the cheapest signal of a frame it finds hard.
DEFAULT_CONFIDENCE_BAND: dict[str, tuple[float, float]] = {"*": (0.25, 0.5)}


class CollectionPolicy(BaseModel):
    """What makes a frame worth sending back (any reason suffices) and how many may go. Every
    field has a default: a file names only what it changes (``confidence_band: {}`` turns the
    band off)."""

    model_config = ConfigDict(extra="forbid")
    confidence_band: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_CONFIDENCE_BAND)
    )
    min_detections: int | None = Field(default=None, ge=0)
    max_detections: int | None = Field(default=None, ge=0)
    sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    duplicate_distance: int = Field(default=6, ge=-1, le=64)
    duplicate_window: int = Field(default=64, ge=0)

    @field_validator("confidence_band")
    @classmethod
    def _band_ordered(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (low, high) in value.items():
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"band of {name!r} must be 0 <= low <= high <= 1, got {low, high}")
        return value


def load_policy(path: Path) -> CollectionPolicy:
    """The policy in YAML file ``path``; an InputError names the file and the field at fault."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise InputError(f"cannot read collection policy {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise InputError(f"collection policy {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise InputError(f"collection policy {path} must be a mapping of options")
    return policy_from_mapping(raw, source=str(path))


def policy_from_mapping(raw: dict[str, Any], *, source: str = "policy") -> CollectionPolicy:
    """``raw`` validated; an InputError names ``source`` and each field at fault."""
    try:
        return CollectionPolicy.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or '(top)'}: {item['msg']}"
            for item in error.errors()
        )
        raise InputError(f"collection policy {source}: {problems}") from None


def policy_reasons(
    policy: CollectionPolicy, records: Sequence[dict[str, Any]], *, rng: random.Random
) -> list[str]:
    """Why a frame with detection ``records`` (``class``, ``score``) is a hard case; [] if not."""
    reasons: list[str] = []
    for record in records:
        band = policy.confidence_band.get(record["class"], policy.confidence_band.get("*"))
        if band is not None and band[0] <= record["score"] <= band[1]:
            reasons.append(f"uncertain:{record['class']}")
    reasons = sorted(set(reasons))
    if policy.min_detections is not None and len(records) < policy.min_detections:
        reasons.append("too_few_detections")
    if policy.max_detections is not None and len(records) > policy.max_detections:
        reasons.append("too_many_detections")
    if not reasons and policy.sample_rate > 0 and rng.random() < policy.sample_rate:
        reasons.append("random_sample")
    return reasons


class RateLimiter:
    """At most N frames per minute, hour and day (sliding windows); ``clock`` is injectable (wall
    time by default, so that ``times`` can be kept across runs)."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.time) -> None:
        self._limits = {
            WINDOWS_S[name]: count
            for name, count in limits.model_dump().items()
            if count is not None
        }
        self._clock = clock
        self._times: deque[float] = deque()

    def allow(self) -> bool:
        """Whether one more frame fits every window now; if so it is counted."""
        now = self._clock()
        longest = max(self._limits, default=0.0)
        while self._times and now - self._times[0] >= longest:
            self._times.popleft()
        for window_s, count in self._limits.items():
            if sum(1 for t in self._times if now - t < window_s) >= count:
                return False
        self._times.append(now)
        return True

    @property
    def times(self) -> list[float]:
        """When the frames still inside the longest window were allowed."""
        return list(self._times)

    def restore(self, times: Sequence[float]) -> None:
        """Count these earlier frames too (a previous run's ``times``)."""
        self._times = deque(sorted(float(t) for t in times))


def dhash(image: Image.Image, size: int = 8) -> int:
    """A 64-bit difference hash: grayscale at (size+1) x size, one bit per horizontal gradient
    sign. Near-identical frames (noise, recompression) differ in a few bits."""
    small = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR))
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class Collector:
    """The device-side decision: policy reasons, then near-duplicates, then rate limits."""

    def __init__(
        self,
        policy: CollectionPolicy,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._rng = random.Random(seed)
        self._limiter = RateLimiter(policy.rate_limits, clock)
        self._recent: deque[int] = deque(maxlen=max(policy.duplicate_window, 1))
        self.skipped = {"duplicate": 0, "rate_limited": 0}

    def decide(self, image: Image.Image, records: Sequence[dict[str, Any]]) -> list[str]:
        """The reasons to collect this frame, or [] (not a hard case, a near-duplicate of a
        recently kept frame, or over a rate limit)."""
        reasons = policy_reasons(self.policy, records, rng=self._rng)
        if not reasons:
            return []
        frame_hash = dhash(image)
        if self.policy.duplicate_distance >= 0 and any(
            hamming(frame_hash, seen) <= self.policy.duplicate_distance for seen in self._recent
        ):
            self.skipped["duplicate"] += 1
            return []
        if not self._limiter.allow():
            self.skipped["rate_limited"] += 1
            return []
        self._recent.append(frame_hash)
        return reasons

    def memory(self) -> dict[str, Any]:
        """What the next run must remember: the kept frames' times (rate limits) and hashes
        (near-duplicates). ``predict --collect`` keeps it in the outbox's state.json, so that a
        device that runs predict once a minute is limited as one that runs it for a day."""
        return {
            "kept_at": self._limiter.times,
            "recent_hashes": [f"{h:016x}" for h in self._recent],
        }

    def restore(self, memory: dict[str, Any]) -> None:
        """Continue from a previous run's ``memory()``; anything malformed is ignored (a fresh
        start is safe: at worst a few more frames are kept)."""
        try:
            kept_at = [float(t) for t in memory.get("kept_at", [])]
            hashes = [int(str(h), 16) for h in memory.get("recent_hashes", [])]
        except (TypeError, ValueError, AttributeError):
            return
        self._limiter.restore(kept_at)
        self._recent.extend(hashes)
