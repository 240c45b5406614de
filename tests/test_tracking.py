"""Which W&B mode a run uses when nothing presets WANDB_MODE: ``auto`` is online with an API key
and offline without one; an explicit mode wins over the key; a preset WANDB_MODE wins over
``auto``. Offline runs are real W&B files, read back with ``wandb leet inspect``. Nothing here
goes online: the online cases check the decision only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import compose_config
from hydra.utils import instantiate

from rlaif.tracking import WandbTracker, new_run_id

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the format of a key; never sent anywhere


@pytest.fixture
def bare_env(monkeypatch, tmp_path):
    """No WANDB_MODE and no API key (conftest presets WANDB_MODE=offline for the other tests)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no settings of this machine's user
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "60")  # a run that tried to go online fails instead of hanging
    return monkeypatch


def _inspect(run_dir: Path, run_id: str) -> dict:
    runs = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1, sorted(p.name for p in (run_dir / "wandb").iterdir())
    out = subprocess.run(["wandb", "leet", "inspect", "--json", "--summary", str(runs[0])], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def _offline_run(tracker: WandbTracker, run_dir: Path) -> dict:
    run_id = new_run_id()
    tracker.start(run_dir, {"seed": 3, "optimizer": {"name": "dpo"}}, name="mode-test", run_id=run_id)
    assert tracker.run_id == run_id and "(offline" in tracker.location and str(run_dir / "wandb") in tracker.location
    tracker.log({"train/loss": 0.5})
    tracker.summary({"eval/win_rate": 0.625})
    tracker.finish()
    info = _inspect(run_dir, run_id)
    assert info["summary"]["train/loss"] == 0.5 and info["summary"]["eval/win_rate"] == 0.625
    assert info["config"]["seed"] == 3 and info["config"]["optimizer"] == {"name": "dpo"}
    return info


def test_the_configured_tracker_is_auto():
    tracker = instantiate(compose_config([]).tracker)
    assert isinstance(tracker, WandbTracker) and tracker.mode == "auto"


def test_auto_without_a_key_is_offline_and_writes_offline_files(bare_env, tmp_path):
    tracker = WandbTracker(mode="auto")
    assert tracker.resolved_mode() == "offline"
    _offline_run(tracker, tmp_path / "run")


def test_an_empty_wandb_mode_counts_as_unset(bare_env, tmp_path):
    bare_env.setenv("WANDB_MODE", "")
    tracker = WandbTracker(mode="auto")
    assert tracker.resolved_mode() == "offline"
    _offline_run(tracker, tmp_path / "run")


def test_auto_with_a_key_is_online(bare_env):
    bare_env.setenv("WANDB_API_KEY", FAKE_KEY)
    assert WandbTracker(mode="auto").resolved_mode() == "online"


def test_explicit_offline_stays_offline_with_a_key(bare_env, tmp_path):
    bare_env.setenv("WANDB_API_KEY", FAKE_KEY)
    tracker = WandbTracker(mode="offline")
    assert tracker.resolved_mode() == "offline"
    _offline_run(tracker, tmp_path / "run")


def test_explicit_online_does_not_need_the_key_to_be_chosen(bare_env):
    assert WandbTracker(mode="online").resolved_mode() == "online"


@pytest.mark.parametrize("preset", ["offline", "disabled"])
def test_a_preset_wandb_mode_wins_over_auto_and_the_key(bare_env, preset):
    bare_env.setenv("WANDB_API_KEY", FAKE_KEY)
    bare_env.setenv("WANDB_MODE", preset)
    assert WandbTracker(mode="auto").resolved_mode() == preset


def test_explicit_mode_wins_over_a_preset_wandb_mode(bare_env, tmp_path):
    bare_env.setenv("WANDB_MODE", "online")
    tracker = WandbTracker(mode="offline")
    assert tracker.resolved_mode() == "offline"
    _offline_run(tracker, tmp_path / "run")


def test_a_run_without_wandb_mode_or_key_tracks_offline_in_its_folder(bare_env, tiny_overrides, tmp_path):
    from rlaif.pipeline import run

    out = tmp_path / "run"
    summary = run(compose_config([*tiny_overrides, "diagnostics=none"]), output_dir=out)
    (folder,) = (out / "wandb").glob("offline-run-*")
    run_id = folder.name.rsplit("-", 1)[1]
    info = _inspect(out, run_id)
    assert info["summary"]["eval/kl"] == pytest.approx(summary["eval/kl"])
    registry = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "runs").glob("*.json")]
    assert [e["wandb_run_id"] for e in registry] == [run_id]
