"""Interruptions and replay on the tiny model, with the real pipeline, models and W&B (offline).

* kill -9 during generation, then during training: rerunning the same command finishes the run,
  reads back exactly what was saved, recomputes none of it, continues the same W&B run and ends
  with the outputs (and weights) of an uninterrupted run;
* SIGTERM (handled like Ctrl-C): partial work kept, a message, KeyboardInterrupt re-raised; the
  rerun resumes;
* replay from a recorded run with the model paths pointing nowhere: nothing is loaded; missing
  records or a different judge setting fail before anything loads.

Slow (``pytest -m slow tests/test_resume.py``): the fault-injection script with 6 kills, the exit
status of Ctrl-C through the CLI, and two concurrent runs sharing one cache.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import compose_config
from fault_injection import DISTILLED_STAGES, Harness, compare, inject, table, tiny_overrides, wandb_ids

from rlaif.pipeline import run
from rlaif.replay import ReplayError

CANDIDATES = 4 * 3  # num_train x num_candidates


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    """An uninterrupted run (its own cache) that every test compares with."""
    root = tmp_path_factory.mktemp("resume")

    def overrides_for(cache: Path) -> list[str]:
        return tiny_overrides(tiny_model, cache, num_train=4, num_eval=2)

    ref_cache = root / "ref-cache"
    summary = run(compose_config(overrides_for(ref_cache) + ["tracker=none"]), output_dir=root / "ref")
    return SimpleNamespace(root=root, overrides_for=overrides_for, ref=root / "ref", ref_cache=ref_cache,
                           summary=summary, model=tiny_model)


def test_kill_9_in_generation_and_training_then_rerun_the_same_command(setup):
    out = inject(setup.root / "kills", setup.overrides_for, kills=2, seed=0, ref_dir=setup.ref,
                 targets=["generate", "train"], timeout=300, units=(1, 1))
    print(table(out))
    gen, train = out.kills
    assert (gen.stage, train.stage) == ("generate", "train"), table(out)
    assert 0 < gen.saved < CANDIDATES and train.saved >= 1
    # nothing saved was lost or recomputed
    assert gen.reused == gen.saved and gen.computed == CANDIDATES - gen.saved
    assert train.reused == train.saved
    assert out.lost == 0 and not out.mismatches, table(out)
    # one run folder, one W&B run continued by every attempt
    summary = json.loads((out.run_dir / "summary.json").read_text())
    assert summary["resume/train_resumed_step"] == train.saved
    registry = [json.loads(p.read_text()) for p in (setup.root / "kills" / "cache" / "runs").glob("*.json")]
    assert len(registry) == 1 and registry[0]["status"] == "finished" and registry[0]["attempt"] == 3
    assert out.wandb_ids == {registry[0]["wandb_run_id"]}
    assert len(list((out.run_dir / "wandb").glob("offline-run-*"))) == 3
    later = [p for p in (setup.root / "kills" / "outputs").glob("*/*") if p.resolve() != out.run_dir.resolve()]
    assert later and all((p / "resumed_run").resolve() == out.run_dir.resolve() for p in later)
    assert not list((setup.root / "kills" / "cache" / "checkpoints").glob("*/*"))  # scratch removed when done


def _signal_when(path: Path, stage: str, items: int, signum: int) -> threading.Thread:
    """Send ``signum`` to this process once progress.json shows ``items`` computed in ``stage``."""
    def watch():
        end = time.time() + 120
        while time.time() < end:
            try:
                st = json.loads(path.read_text())
                if st.get("stage") == stage and st["stages"].get(stage, {}).get("computed", 0) >= items:
                    os.kill(os.getpid(), signum)
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_sigterm_keeps_partial_work_and_the_rerun_resumes(setup, tmp_path, capsys):
    cfg = compose_config(setup.overrides_for(tmp_path / "cache"))
    out = tmp_path / "run"
    watcher = _signal_when(out / "progress.json", "generate", 2, signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, output_dir=out)
    watcher.join(5)
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err
    progress = json.loads((out / "progress.json").read_text())
    assert progress["status"] == "interrupted" and progress["stage"] == "generate"
    entry = json.loads(next((tmp_path / "cache" / "runs").glob("*.json")).read_text())
    assert entry["status"] == "interrupted"
    saved = Harness(tmp_path, [], tmp_path / "cache").journaled("generate")
    assert 2 <= saved < CANDIDATES
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handler is gone

    summary = run(cfg, output_dir=out)  # the same call again
    assert summary["resume/generate_reused"] == saved
    assert summary["resume/generate_computed"] == CANDIDATES - saved
    assert not compare(out, setup.ref)
    assert len(wandb_ids(out)) == 1 and len(list((out / "wandb").glob("offline-run-*"))) == 2


def test_replay_loads_no_model_when_downstream_is_cached(setup, tmp_path):
    missing = tmp_path / "no-such-model"
    cfg = compose_config(setup.overrides_for(setup.ref_cache) + ["tracker=none", f"replay={setup.ref}",
                                                                 f"policy.model={missing}"])
    assert cfg.judge.model == str(missing)  # the judge's model points nowhere too
    summary = run(cfg, output_dir=tmp_path / "replay")  # would raise on any attempt to load or resolve a model
    assert not compare(tmp_path / "replay", setup.ref)
    assert summary["cache/hits"] == 6  # generate and judge replayed; diagnostics, train, evaluate x2 from the cache
    manifest = json.loads((tmp_path / "replay" / "manifest.json").read_text())
    assert manifest["run"]["replay_of"] == str(setup.ref)
    assert manifest["models"] == json.loads((setup.ref / "manifest.json").read_text())["models"]


def test_replay_true_finds_the_recorded_run_and_trains_anew(setup, tmp_path):
    cfg = compose_config(setup.overrides_for(setup.ref_cache) + ["tracker=none", "replay=true", "optimizer.epochs=1",
                                                                 "optimizer.save_steps=null"])
    summary = run(cfg, output_dir=tmp_path / "replay")
    progress = json.loads((tmp_path / "replay" / "progress.json").read_text())
    assert progress["stages"]["generate"] == {"cached": CANDIDATES, "computed": 0, "reused": 0}
    assert progress["stages"]["judge"] == {"cached": CANDIDATES, "computed": 0, "reused": 0}
    assert "resume/generate_computed" not in summary and summary["train/loss"] != setup.summary["train/loss"]
    for name in ("candidates.jsonl", "judgments.jsonl", "preferences.jsonl"):
        assert (tmp_path / "replay" / name).read_bytes() == (setup.ref / name).read_bytes()


def test_replay_fails_before_loading_anything(setup, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(setup.ref, partial, symlinks=True)
    (partial / "judgments.jsonl").unlink()
    nowhere = f"policy.model={tmp_path / 'no-such-model'}"
    with pytest.raises(ReplayError) as err:
        run(compose_config(setup.overrides_for(tmp_path / "c1") + [f"replay={partial}", nowhere]),
            output_dir=tmp_path / "r1")
    # names the missing file and stage, and how to create it: finish (rerun) the recorded run
    assert (f"the recorded run has no judgments.jsonl: its 'judge' stage never finished, so there is nothing to "
            f"replay. Create it by finishing that run:\n    the run that wrote {partial} (its config is "
            f"{partial / 'resolved_config.yaml'})\nthen replay again.") in str(err.value)
    (partial / ".hydra").mkdir()  # launched from the CLI: the message gives that command to rerun
    (partial / ".hydra" / "overrides.yaml").write_text("- optimizer.beta=0.5\n- name=my run\n")
    with pytest.raises(ReplayError) as err:
        run(compose_config(setup.overrides_for(tmp_path / "c1") + [f"replay={partial}", nowhere]),
            output_dir=tmp_path / "r1")
    assert "Create it by finishing that run:\n    rlaif optimizer.beta=0.5 'name=my run'\nthen replay again." \
        in str(err.value)
    with pytest.raises(ReplayError, match="judge.dtype"):
        run(compose_config(setup.overrides_for(tmp_path / "c2") + [f"replay={setup.ref}", nowhere,
                                                                   "judge.dtype=bfloat16"]), output_dir=tmp_path / "r2")
    with pytest.raises(ReplayError, match="no finished run"):
        run(compose_config(setup.overrides_for(tmp_path / "c3") + ["replay=true"]), output_dir=tmp_path / "r3")
    assert not (tmp_path / "c1" / "models").exists()


def test_journal_ignores_a_torn_line_and_stale_batches(tmp_path):
    from rlaif.journal import Journal

    path = tmp_path / "j.jsonl"
    j = Journal(path)
    j.append(0, [["p1", 0], ["p1", 1]], [{"text": "a"}, {"text": "b"}])
    j.append(1, [["p2", 0]], [{"text": "c"}])
    with open(path, "ab") as f:  # a kill in the middle of the next line
        f.write(b'{"batch": 2, "items": [["p3", 0]], "rec')
    j = Journal(path)
    assert j.torn == 1 and j.finished_items == 3
    assert j.lookup(0, [("p1", 0), ("p1", 1)]) == [{"text": "a"}, {"text": "b"}]
    assert j.lookup(1, [["p2", 1]]) is None  # the batch now covers other items: not reused
    assert j.lookup(2, [["p3", 0]]) is None
    j.append(2, [["p3", 0]], [{"text": "d"}])  # starts on a fresh line after the torn one
    j = Journal(path)
    assert j.torn == 1 and j.lookup(2, [["p3", 0]]) == [{"text": "d"}] and j.reused == 1


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["grpo", "rloo", "online_dpo", "ppo"])
def test_online_training_killed_and_resumed_matches_uninterrupted(optimizer, tiny_model, tmp_path):
    out = inject(tmp_path, lambda cache: tiny_overrides(tiny_model, cache, optimizer=optimizer), kills=1, seed=0,
                 targets=["train"], units=(1, 1), timeout=600)
    print(table(out))
    assert out.kills[0].stage == "train" and out.kills[0].saved >= 1 and out.kills[0].recomputed == 0, table(out)
    assert out.lost == 0 and not out.mismatches, table(out)


@pytest.mark.slow
def test_distilled_rlaif_killed_in_reward_model_training_resumes(tiny_model, tmp_path):
    """optimizer.reward_source=reward_model: a kill inside the reward model's training resumes from
    its newest checkpoint, and the run ends as an uninterrupted one."""
    out = inject(tmp_path, lambda cache: tiny_overrides(tiny_model, cache, optimizer="grpo", distilled=True), kills=1,
                 seed=0, targets=["reward_model"], units=(1, 1), timeout=600, stages=DISTILLED_STAGES)
    print(table(out))
    k = out.kills[0]
    assert k.stage == "reward_model" and k.saved >= 1 and k.reused == k.saved, table(out)
    assert out.lost == 0 and not out.mismatches and len(out.wandb_ids) == 1, table(out)


# ---- slow ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fault_injection_six_random_kills(tiny_model, tmp_path):
    """What `python tests/fault_injection.py --kills 6 --seed 0` does (its own uninterrupted run)."""
    out = inject(tmp_path, lambda cache: tiny_overrides(tiny_model, cache), kills=6, seed=0, timeout=600)
    print(table(out))
    assert {str(k.stage).split("_")[0] for k in out.kills} >= {"generate", "judge", "train", "evaluate"}, table(out)
    assert all(k.recomputed == 0 for k in out.kills), table(out)
    assert out.lost == 0 and not out.mismatches and len(out.wandb_ids) == 1, table(out)


@pytest.mark.slow
def test_ctrl_c_through_the_cli(setup, tmp_path):
    h = Harness(tmp_path, setup.overrides_for(tmp_path / "cache"), tmp_path / "cache")
    proc = h.start()
    deadline = time.time() + 120
    while time.time() < deadline and h.progress().get("stages", {}).get("generate", {}).get("computed", 0) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(60)
    log = h.logs[-1].read_text()
    assert rc in (130, -signal.SIGINT), (rc, log[-2000:])  # 130 once the CLI maps it; the shell shows 130 either way
    assert "interrupted; rerun the same command to resume" in log
    assert h.progress()["status"] == "interrupted"
    proc = h.start()
    assert proc.wait(300) == 0, h.logs[-1].read_text()[-2000:]
    assert not compare(h.run_dir(), setup.ref)


@pytest.mark.slow
def test_two_concurrent_runs_share_one_cache(setup, tmp_path):
    cache = tmp_path / "cache"
    procs = []
    for n in (1, 2):
        (tmp_path / f"w{n}").mkdir()
        h = Harness(tmp_path / f"w{n}", setup.overrides_for(cache) + [f"hydra.run.dir={tmp_path / f'run{n}'}"], cache)
        procs.append((h, h.start()))
    for h, p in procs:
        assert p.wait(600) == 0, h.logs[-1].read_text()[-2000:]
    for n in (1, 2):
        assert not compare(tmp_path / f"run{n}", setup.ref)
    for stage in (cache / "stages").iterdir():
        entries = list(stage.iterdir())
        assert len(entries) == 1 and (entries[0] / "COMPLETE").exists(), entries  # no temp folders left
    logs = "".join(h.logs[-1].read_text(errors="replace") for h, _ in procs)
    assert "reusing cached results" in logs  # what one computed, the other used (after waiting on its lock)


def test_run_registry_rules(tmp_path):
    """Which earlier run a new one continues: an unfinished run whose process is gone, unless
    resume=never or the caller chose another folder; never a live run, never a finished one."""
    from rlaif.runs import RunRegistry

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    reg = RunRegistry(tmp_path / "cache")
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    first, resumed = reg.claim("k", {"output_dir": str(old), "wandb_run_id": "aaaa1111"}, allow_resume=True)
    assert resumed is None and first["attempt"] == 1
    reg.update("k", first, pid=dead)  # what kill -9 leaves: "running", by a process that is gone

    again, resumed = reg.claim("k", {"output_dir": str(new), "wandb_run_id": "bbbb2222"}, allow_resume=True)
    assert resumed is not None and (again["output_dir"], again["wandb_run_id"], again["attempt"]) == \
        (str(old), "aaaa1111", 2)
    live, resumed = reg.claim("k", {"output_dir": str(new), "wandb_run_id": "cccc3333"}, allow_resume=True)
    assert resumed is None and not live["registered"]  # this (live) process holds it: a separate run
    reg.update("k", again, status="interrupted")
    other, resumed = reg.claim("k", {"output_dir": str(new), "wandb_run_id": "dddd4444"}, allow_resume=True,
                               folder=str(new))
    assert resumed is None and other["wandb_run_id"] == "dddd4444"  # the caller chose another folder
    reg.update("k", other, status="interrupted")
    never, resumed = reg.claim("k", {"output_dir": str(old), "wandb_run_id": "eeee5555"}, allow_resume=False)
    assert resumed is None and never["wandb_run_id"] == "eeee5555"
    reg.update("k", never, status="finished")
    after, resumed = reg.claim("k", {"output_dir": str(new), "wandb_run_id": "ffff6666"}, allow_resume=True)
    assert resumed is None and after["output_dir"] == str(new)


def test_resume_never_starts_a_new_run_folder_and_wandb_run(setup, tmp_path):
    """From the CLI: an interrupted run, then the same command with resume=never: a new Hydra folder
    and W&B run, attempt 1; the interrupted run's folder is left as it was and no longer resumable."""
    cache = tmp_path / "cache"
    first, second = tmp_path / "first", tmp_path / "second"
    h = Harness(tmp_path, setup.overrides_for(cache) + [f"hydra.run.dir={first}"], cache)
    proc = h.start()
    deadline = time.time() + 300
    while time.time() < deadline and h.progress().get("stages", {}).get("generate", {}).get("computed", 0) < 2:
        assert proc.poll() is None, h.logs[-1].read_text()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) != 0
    interrupted = json.loads((first / "progress.json").read_text())
    assert interrupted["status"] == "interrupted" and not (first / "summary.json").exists()
    (old_id,) = wandb_ids(first)
    (entry_path,) = (cache / "runs").glob("*.json")
    assert json.loads(entry_path.read_text())["wandb_run_id"] == old_id  # resume=auto would continue this one

    h.overrides = setup.overrides_for(cache) + [f"hydra.run.dir={second}", "resume=never"]
    assert h.start().wait(600) == 0, h.logs[-1].read_text()[-3000:]
    log = h.logs[-1].read_text()
    assert "resuming" not in log
    (new_id,) = wandb_ids(second)
    assert new_id != old_id and wandb_ids(first) == {old_id}  # nothing written into the old run's W&B folder
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["run"]["attempt"] == 1 and manifest["run"]["resumed"] is False
    assert manifest["run"]["wandb_run_id"] == new_id
    assert json.loads((second / "progress.json").read_text())["attempt"] == 1
    assert not (second / "resumed_run").exists() and (second / "summary.json").is_file()
    assert json.loads((first / "progress.json").read_text()) == interrupted and not (first / "summary.json").exists()
    entry = json.loads(entry_path.read_text())
    assert (entry["output_dir"], entry["wandb_run_id"], entry["attempt"], entry["status"]) == \
        (str(second), new_id, 1, "finished")
    assert not compare(second, setup.ref)  # the same results as an uninterrupted run
