"""The device's collection policy, near-duplicate suppression and the on-disk outbox."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeler.core.exceptions import InputError
from serve.runtime import outbox as outbox_module
from serve.runtime.collect import (
    CollectionPolicy,
    Collector,
    RateLimiter,
    RateLimits,
    dhash,
    hamming,
    load_policy,
    policy_reasons,
)
from serve.runtime.outbox import Outbox

REPO_ROOT = Path(__file__).resolve().parents[3]
RUN_CLI = "from serve.cli.main import main; main()"


def _frame(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_band_per_class_counts_and_sampling() -> None:
    policy = CollectionPolicy(
        confidence_band={"person": (0.25, 0.5), "*": (0.4, 0.45)},
        min_detections=1,
        max_detections=2,
    )
    rng = random.Random(0)
    person = {"class": "person", "score": 0.3}
    assert policy_reasons(policy, [person], rng=rng) == ["uncertain:person"]
    assert policy_reasons(policy, [{"class": "person", "score": 0.6}], rng=rng) == []
    assert policy_reasons(policy, [{"class": "car", "score": 0.3}], rng=rng) == []
    assert policy_reasons(policy, [{"class": "car", "score": 0.42}], rng=rng) == ["uncertain:car"]
    assert policy_reasons(policy, [], rng=rng) == ["too_few_detections"]
    many = [{"class": "car", "score": 0.9}] * 3
    assert policy_reasons(policy, many, rng=rng) == ["too_many_detections"]

    sampled = CollectionPolicy(sample_rate=0.25)
    picks = [bool(policy_reasons(sampled, [], rng=random.Random(7 + i))) for i in range(400)]
    again = [bool(policy_reasons(sampled, [], rng=random.Random(7 + i))) for i in range(400)]
    assert picks == again  # a seed makes sampling repeatable
    assert 60 < sum(picks) < 140


def test_rate_limits_with_an_injected_clock() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimits(per_minute=2, per_hour=3), clock=lambda: now[0])
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    now[0] = 61.0
    assert limiter.allow() is True  # a new minute, the hour's third
    assert limiter.allow() is False  # the hour is full
    now[0] = 3601.0
    assert limiter.allow() is True


def test_near_duplicates_suppressed_and_different_frames_kept() -> None:
    base = _frame(1)
    noisy = np.asarray(base).astype(np.int16) + np.random.default_rng(2).integers(
        -3, 4, (64, 80, 3)
    )
    near = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    assert hamming(dhash(base), dhash(near)) <= 6
    assert hamming(dhash(base), dhash(_frame(3))) > 6

    collector = Collector(CollectionPolicy(min_detections=1), seed=0)
    assert collector.decide(base, []) == ["too_few_detections"]
    assert collector.decide(near, []) == []
    assert collector.decide(_frame(3), []) == ["too_few_detections"]
    assert collector.skipped["duplicate"] == 1


def test_policy_file_errors_name_the_file_and_field(tmp_path: Path) -> None:
    good = tmp_path / "policy.yaml"
    good.write_text("confidence_band: {person: [0.25, 0.5]}\nrate_limits: {per_hour: 10}\n")
    assert load_policy(good).rate_limits.per_hour == 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("confidence_band: {person: [0.6, 0.5]}\nsample_rate: 2\n")
    with pytest.raises(InputError, match=r"bad\.yaml.*confidence_band.*sample_rate"):
        load_policy(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("max_detection: 3\n")
    with pytest.raises(InputError, match=r"typo\.yaml: max_detection"):
        load_policy(typo)


def test_outbox_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "out", max_bytes=3700)  # three 1000-byte frames and manifests
    for i in range(5):
        outbox.add(bytes([i]) * 1000, suffix=".jpg", manifest={"reasons": ["x"]}, now=100.0 + i)
        assert outbox.size_bytes() <= 3700
    kept = list(outbox.entries())
    assert [e.frame.read_bytes()[0] for e in kept] == [2, 3, 4]
    assert outbox.dropped == 2
    assert Outbox(tmp_path / "out").dropped == 2  # persisted


def test_full_disk_stops_collection_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    outbox = Outbox(tmp_path / "out")
    monkeypatch.setattr(outbox_module, "atomic_write", no_space)
    assert outbox.add(b"x", suffix=".jpg", manifest={}) is None
    assert outbox.disabled_reason and "disk full" in outbox.disabled_reason
    assert outbox.add(b"y", suffix=".jpg", manifest={}) is None
    assert list((tmp_path / "out").iterdir()) == []


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from serve.runtime import outbox as ob

    real_write = ob.atomic_write

    def slow_write(path, data):
        tmp = path.with_name(path.name + ob.TMP_SUFFIX)
        with open(tmp, "wb") as handle:
            for start in range(0, len(data), 1 << 16):
                handle.write(data[start:start + (1 << 16)])
                handle.flush()
                if start == 1 << 20:
                    print("writing", flush=True)
        real_write(path, data)

    ob.atomic_write = slow_write
    ob.Outbox(Path(sys.argv[1])).add(b"z" * (64 << 20), suffix=".jpg", manifest={})
    """
)


def test_kill_9_mid_write_leaves_nothing_to_send(tmp_path: Path) -> None:
    root = tmp_path / "out"
    Outbox(root).add(b"complete", suffix=".jpg", manifest={"reasons": ["x"]})
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline().strip() == b"writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    assert any(p.name.endswith(".tmp") for p in root.iterdir())  # killed mid-write
    reopened = Outbox(root)
    assert [e.frame.read_bytes() for e in reopened.entries()] == [b"complete"]
    assert not any(p.name.endswith(".tmp") for p in root.iterdir())


def test_predict_collect_writes_manifests_and_survives_full_disk(
    students: object, sample_images: list[Path], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_detections: 1000\nduplicate_distance: -1\n")  # every frame is a case
    outbox_root = tmp_path / "outbox"
    command = [
        sys.executable, "-c", RUN_CLI, "predict", str(students.static),  # type: ignore[attr-defined]
        *map(str, sample_images[:2]), "--json", "--conf", "0.05",
        "--collect", str(outbox_root), "--policy", str(policy), "--device-name", "cam-7",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert "collected 2 hard cases" in result.stderr
    manifests = [e.manifest for e in Outbox(outbox_root).entries()]
    assert [m["device"] for m in manifests] == ["cam-7", "cam-7"]
    assert manifests[0]["reasons"] == ["too_few_detections"]
    assert manifests[0]["predictions"] == payload["images"][0]["detections"]

    # A full disk: collection stops with one warning, prediction goes on.
    full = tmp_path / "full"
    result = subprocess.run(
        [sys.executable, "-c",
         "import errno, sys\n"
         "from serve.runtime import outbox as ob\n"
         "def nospace(p, d): raise OSError(errno.ENOSPC, 'No space left on device')\n"
         "ob.atomic_write = nospace\n"
         "from serve.cli.main import main\nmain()",
         *command[3:-6], "--collect", str(full), "--policy", str(policy)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == payload["images"]
    assert "collected 0 hard cases" in result.stderr and "disk full" in result.stderr


def test_policy_without_collect_is_a_usage_error(
    students: object, sample_images: list[Path], tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("{}\n")
    result = subprocess.run(
        [sys.executable, "-c", RUN_CLI, "predict", str(students.static),  # type: ignore[attr-defined]
         str(sample_images[0]), "--policy", str(policy)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "--policy needs --collect" in result.stderr


def test_the_default_policy_keeps_uncertain_frames_at_a_bounded_rate() -> None:
    policy = CollectionPolicy()
    rng = random.Random(0)
    assert policy_reasons(policy, [{"class": "cat", "score": 0.3}], rng=rng) == ["uncertain:cat"]
    assert policy_reasons(policy, [{"class": "cat", "score": 0.8}], rng=rng) == []
    assert policy_reasons(policy, [], rng=rng) == []  # an empty frame is not a reason by default
    assert policy.rate_limits == RateLimits(per_minute=6, per_hour=60, per_day=500)
    assert CollectionPolicy(confidence_band={}).confidence_band == {}  # a file can turn it off


def test_the_collectors_memory_carries_over_to_the_next_run(tmp_path: Path) -> None:
    now = [1000.0]
    policy = CollectionPolicy(min_detections=1, rate_limits=RateLimits(per_minute=2))
    first = Collector(policy, seed=0, clock=lambda: now[0])
    assert first.decide(_frame(1), []) and first.decide(_frame(3), [])
    outbox = Outbox(tmp_path / "outbox")
    outbox.save_state(collector=first.memory())
    outbox.save_state(dropped=4)  # merged, not replaced
    assert outbox.dropped == 4

    # The next run, a few seconds later: the minute is full, and frame 1 is a near-duplicate.
    now[0] += 5
    second = Collector(policy, seed=0, clock=lambda: now[0])
    second.restore(Outbox(tmp_path / "outbox").state()["collector"])
    assert second.decide(_frame(5), []) == [] and second.skipped["rate_limited"] == 1
    now[0] += 60
    assert second.decide(_frame(1), []) == [] and second.skipped["duplicate"] == 1
    assert second.decide(_frame(5), []) == ["too_few_detections"]
    # A damaged memory is a fresh start, never a failure.
    fresh = Collector(policy, seed=0, clock=lambda: now[0])
    fresh.restore({"kept_at": ["soon"], "recent_hashes": [None]})
    assert fresh.decide(_frame(1), []) == ["too_few_detections"]


def test_predict_collect_limits_across_runs(
    students: object, sample_images: list[Path], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_detections: 1000\nduplicate_distance: -1\nrate_limits: {per_hour: 3}\n")
    command = [
        sys.executable, "-c", RUN_CLI, "predict", str(students.static),  # type: ignore[attr-defined]
        *map(str, sample_images[:2]),
        "--collect", str(tmp_path / "outbox"), "--policy", str(policy),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    runs = [
        subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
        for _ in range(2)
    ]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr
    assert "collected 2 hard cases" in runs[0].stderr
    assert "collected 1 hard cases" in runs[1].stderr and "1 over the rate limit" in runs[1].stderr
