"""Fault injection: kill a reduced quickstart with SIGKILL at random moments, rerun the same command
each time, and check that the run loses nothing, recomputes nothing it had finished, and ends with
the outputs of an uninterrupted run.

    python tests/fault_injection.py --kills 6 --seed 0            # tiny model (tests/conftest.py), ~2 min
    python tests/fault_injection.py --kills 6 --seed 0 --embedded # real SmolLM2-135M reduced quickstart
    python tests/fault_injection.py --kills 6 --optimizer grpo --distilled  # reward-model training too
    pytest -m slow tests/test_resume.py -k fault_injection        # the same, as a test

Each attempt is the *same* `python -m rlaif ...` command in the same working folder (Hydra gives
it a new timestamped folder; the run registry sends it back to the run it continues). Kill
points are drawn with ``--seed``: the stages (generate, judge, train, evaluate; with
``--distilled``, also reward_model between judge and train) in pipeline order,
each at least once when there are enough kills, and within a stage a random number of finished
batches or a random delay. Just before each kill the process is frozen (SIGSTOP) so that what it
had saved -- items in the stage's journals, the newest complete training checkpoint -- is read
exactly; then SIGKILL. The next attempt's ``progress.json`` says what it read back:

* reused: items of that stage it read back from the journal (or the checkpoint step it resumed);
* recomputed: items that had been saved at the kill but were computed again (saved - reused);
* lost: items missing from the final outputs.

At the end the outputs (candidates, judgments, preferences, evaluation samples, training history
and summary, timings and resume counters left out; the trained weights) are compared with an
uninterrupted run of the same config in its own cache, and the W&B offline folders of all
attempts must share one run id.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("generate", "judge", "train", "evaluate")
DISTILLED_STAGES = ("generate", "judge", "reward_model", "train", "evaluate")  # reward_source=reward_model
ALL_STAGES = DISTILLED_STAGES
CHECKPOINTED = ("reward_model", "train")  # stages that resume from training checkpoints
# Stages of progress.json whose work is journaled per batch, and the files holding their items.
JOURNALED = {"generate": ("generate",), "judge": ("judge",), "evaluate": ("evaluate_reference", "evaluate")}
COMPARED_FILES = ("candidates.jsonl", "judgments.jsonl", "verdicts.jsonl", "preferences.jsonl", "eval_reference.jsonl",
                  "eval_samples.jsonl", "eval_metrics.jsonl", "diagnostics.json")


def _timing(key: str) -> bool:
    """Keys that measure time or this attempt's bookkeeping, not what the run computed."""
    return (key.startswith(("time/", "resume/")) or key == "cache/hits" or "runtime" in key
            or "per_second" in key or key.endswith("_time"))


OPTIMIZER_OVERRIDES = {  # small, checkpointing every step, bf16 off (bit-exact comparisons on CPU)
    "dpo": ["optimizer.epochs=2", "optimizer.batch_size=2", "optimizer.learning_rate=1e-3", "optimizer.save_steps=1"],
    "grpo": ["optimizer.num_generations=2", "optimizer.batch_size=4", "optimizer.learning_rate=1e-3",
             "optimizer.save_steps=1"],
    "rloo": ["optimizer.num_generations=2", "optimizer.batch_size=4", "optimizer.learning_rate=1e-3",
             "optimizer.save_steps=1"],
    "online_dpo": ["optimizer.batch_size=2", "optimizer.learning_rate=1e-3", "optimizer.save_steps=1"],
    "ppo": ["optimizer.total_episodes=32", "optimizer.rollout_batch_size=4", "optimizer.ppo_epochs=1",
            "optimizer.num_minibatches=1", "optimizer.forward_batch_size=4", "optimizer.learning_rate=1e-3",
            "optimizer.save_every=1", "optimizer.progress_bar=false"],
}


DISTILLED_OVERRIDES = ["optimizer.reward_source=reward_model", "reward_model.epochs=4", "reward_model.batch_size=1",
                       "reward_model.learning_rate=1e-3", "reward_model.eval_fraction=0", "reward_model.save_steps=1"]


def tiny_overrides(model: str, cache: Path, num_train: int = 8, num_eval: int = 4, optimizer: str = "dpo",
                   distilled: bool = False) -> list[str]:
    """A tiny pipeline with enough batches and steps to be killed inside each stage."""
    return [f"policy.model={model}", f"cache.dir={cache}", f"data.num_train={num_train}", f"data.num_eval={num_eval}",
            "generator.num_candidates=3", "generator.max_new_tokens=8", "generator.dtype=float32",
            "generator.batch_size=2", "judge.dtype=float32", "judge.batch_size=4", "journal.chunk_prompts=1",
            *([f"optimizer={optimizer}"] if optimizer != "dpo" else []), *OPTIMIZER_OVERRIDES[optimizer],
            "optimizer.mixed_precision=no", "evaluation.samples_per_prompt=2", "evaluation.batch_size=2",
            "evaluation.dtype=float32", "diagnostics.probe_items=2", *(DISTILLED_OVERRIDES if distilled else [])]


def embedded_overrides(cache: Path) -> list[str]:
    """The real SmolLM2 quickstart, reduced (as tests/test_integration.py) and checkpointing often."""
    return [f"cache.dir={cache}", "data.num_train=12", "data.num_eval=8", "generator.max_new_tokens=24",
            "generator.batch_size=8", "journal.chunk_prompts=2", "optimizer.epochs=1", "optimizer.batch_size=2",
            "optimizer.save_steps=1", "evaluation.samples_per_prompt=2", "evaluation.batch_size=4"]


@dataclass
class Kill:
    number: int
    target: str
    stage: str | None = None  # where the run was when killed (progress.json)
    saved: int = 0  # journaled items of that stage (or the newest checkpoint's step) at the kill
    reused: int | None = None  # what the next attempt read back
    computed: int | None = None
    note: str = ""

    @property
    def recomputed(self) -> int | None:
        return None if self.reused is None else max(self.saved - self.reused, 0)


@dataclass
class Outcome:
    kills: list[Kill] = field(default_factory=list)
    run_dir: Path | None = None
    mismatches: list[str] = field(default_factory=list)
    lost: int = 0
    wandb_ids: set[str] = field(default_factory=set)
    attempts: int = 0


class Harness:
    """Launches, watches, freezes and kills attempts of one command."""

    def __init__(self, workdir: Path, overrides: list[str], cache: Path, env: dict | None = None):
        self.workdir, self.overrides, self.cache = workdir, overrides, cache
        self.env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false",
                    **(env or {})}
        self.env.pop("WANDB_API_KEY", None)
        # A process that used W&B (pytest, after an in-process run) exports its W&B service; an attempt
        # attached to it would share it with the killed attempts, which that service still counts as live.
        self.env.pop("WANDB_SERVICE", None)
        self.logs: list[Path] = []

    def start(self) -> subprocess.Popen:
        log = self.workdir / f"attempt-{len(self.logs) + 1}.log"
        self.logs.append(log)
        f = open(log, "w")  # noqa: SIM115 - closed when the process ends
        return subprocess.Popen([sys.executable, "-m", "rlaif", *self.overrides], cwd=self.workdir, env=self.env,
                                stdout=f, stderr=subprocess.STDOUT)

    def run_dir(self) -> Path | None:
        entries = sorted((self.cache / "runs").glob("*.json")) if (self.cache / "runs").exists() else []
        for e in entries:
            try:
                return Path(json.loads(e.read_text())["output_dir"])
            except (OSError, ValueError, KeyError):
                continue
        return None

    def progress(self, pid: int | None = None) -> dict:
        """The run's progress.json; with ``pid``, only as written by that process (else {})."""
        rd = self.run_dir()
        try:
            state = json.loads((rd / "progress.json").read_text()) if rd else {}
        except (OSError, ValueError):
            return {}
        return state if pid is None or state.get("pid") == pid else {}

    def journaled(self, stage: str) -> int:
        """Items in the readable lines of a stage's journals (what a rerun can reuse)."""
        from rlaif.journal import Journal

        root = self.cache / "checkpoints" / stage
        return sum(Journal(p).finished_items for p in root.glob("*/*.jsonl")) if root.exists() else 0

    def checkpoint_step(self, stage: str = "train") -> int:
        """The newest complete training checkpoint's step (TRL trainers) or iteration (PPO) of ``stage``."""
        from rlaif.optimizers.checkpoints import complete_checkpoints

        steps = [0]
        for d in (self.cache / "checkpoints" / stage).glob("*"):
            steps += [int(p.name.rsplit("-", 1)[1]) for p in complete_checkpoints(d, clean=False)]
            steps += [int(p.name.rsplit("-", 1)[1]) for p in d.glob("ppo-iter-*") if (p / "state.json").exists()]
        return max(steps)


def plan(kills: int, rng: random.Random, stages: tuple[str, ...] = STAGES) -> list[str]:
    """Target stages in pipeline order: each stage once while kills last, the rest at random."""
    targets = list(stages[:kills]) + [rng.choice(stages) for _ in range(max(kills - len(stages), 0))]
    return sorted(targets, key=stages.index)


def base_stage(stage: str | None) -> str | None:
    """The fault-injection stage a progress.json stage belongs to (evaluate_reference -> evaluate)."""
    return next((t for t in ALL_STAGES if stage and stage.startswith(t)), stage)


def _wait(proc: subprocess.Popen, cond, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        if cond():
            return True
        time.sleep(0.02)
    return False


def kill_at(h: Harness, proc: subprocess.Popen, target: str, rng: random.Random, timeout: float,
            units: tuple[int, int] = (1, 3)) -> Kill | None:
    """Wait for ``target``, let a random amount of work finish, freeze, record, SIGKILL."""
    k = Kill(number=0, target=target)

    def prog() -> dict:  # this attempt's progress only (the file may still be the killed attempt's)
        return h.progress(proc.pid)

    def stage() -> str | None:
        return prog().get("stage")

    def in_target() -> bool:
        s = stage()
        return s is not None and s.startswith(target)

    def moved_on() -> bool:
        s = stage()
        return s is None or not s.startswith(target)

    if not _wait(proc, in_target, timeout):
        return None
    # Let a random number (>= 1, so that everything it could reuse has been read back) of this
    # attempt's batches or checkpoints finish; then kill wherever it is.
    want = rng.randint(*units)
    if target in JOURNALED:
        names = JOURNALED[target]

        def computed() -> int:
            return sum(prog().get("stages", {}).get(n, {}).get("computed", 0) for n in names)

        _wait(proc, lambda: moved_on() or computed() > 0, timeout)
        unit = max(computed(), 1)  # items in one batch
        _wait(proc, lambda: moved_on() or computed() >= want * unit, timeout)
        time.sleep(rng.uniform(0.0, 0.01))
    elif target in CHECKPOINTED:
        start = h.checkpoint_step(target)
        _wait(proc, lambda: moved_on() or h.checkpoint_step(target) >= start + want, timeout)
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside the next step (tiny-model steps take ~30 ms)
    if proc.poll() is not None:
        return None
    os.kill(proc.pid, signal.SIGSTOP)  # frozen: nothing changes while we read what it saved
    if prog().get("status") == "finished":  # too late: the run is done, let it exit
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout)
        return None
    try:
        k.stage = stage()
        base = base_stage(k.stage)
        if base in CHECKPOINTED:
            k.saved = h.checkpoint_step(base)
        elif base in JOURNALED:
            k.saved = sum(h.journaled(n) for n in JOURNALED[base])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return k


def next_attempt_counts(progress: dict, k: Kill) -> None:
    """What the attempt after kill ``k`` read back (from its progress.json)."""
    base = base_stage(k.stage)
    if base in CHECKPOINTED:
        k.reused = int(progress.get(base, {}).get("resumed_step") or 0)
        if (progress.get("stages", {}).get(base, {}) or {}).get("cached"):
            k.reused = k.saved  # finished and cached by the time it looked (a kill while writing the entry)
    elif base in JOURNALED:
        st = progress.get("stages", {})
        k.reused = sum(int(st.get(n, {}).get("reused", 0)) for n in JOURNALED[base])
        k.computed = sum(int(st.get(n, {}).get("computed", 0)) for n in JOURNALED[base])
        if k.saved and not k.reused and any(st.get(n, {}).get("cached") for n in JOURNALED[base]):
            # killed after the stage's last batch, while its cache entry was being written
            k.reused, k.note = k.saved, "killed after its last batch: the stage entry was complete"
    else:
        k.reused = 0


def compare(run: Path, ref: Path) -> list[str]:
    """Differences between a resumed run's outputs and an uninterrupted run's (timings left out)."""
    from safetensors.torch import load_file

    bad = []
    for name in COMPARED_FILES:
        a, b = run / name, ref / name
        if a.exists() != b.exists():
            bad.append(f"{name}: present in only one run")
        elif a.exists() and a.read_bytes() != b.read_bytes():
            bad.append(f"{name} differs")

    def rows(p: Path):
        return [{k: v for k, v in json.loads(x).items() if not _timing(k)} for x in p.read_text().splitlines() if x]

    if rows(run / "train_history.jsonl") != rows(ref / "train_history.jsonl"):
        bad.append("train_history.jsonl differs (timings left out)")
    sa = {k: v for k, v in json.loads((run / "summary.json").read_text()).items() if not _timing(k)}
    sb = {k: v for k, v in json.loads((ref / "summary.json").read_text()).items() if not _timing(k)}
    for key in sorted(set(sa) | set(sb)):
        if sa.get(key) != sb.get(key):
            bad.append(f"summary[{key}]: {sa.get(key)!r} vs uninterrupted {sb.get(key)!r}")
    wa, wb = load_file(str(run / "policy" / "model.safetensors")), load_file(str(ref / "policy" / "model.safetensors"))
    if set(wa) != set(wb) or any(not wa[k].equal(wb[k]) for k in wa):
        bad.append("trained weights differ")
    return bad


def wandb_ids(run: Path) -> set[str]:
    """Run ids of the W&B offline folders (``offline-run-<date>_<time>-<id>``, ``-<n>`` added on a clash)."""
    return {p.name.removeprefix("offline-run-").split("-")[1] for p in (run / "wandb").glob("offline-run-*")}


def inject(workdir: Path, overrides_for, kills: int, seed: int, timeout: float = 600.0,
           ref_dir: Path | None = None, verbose: bool = True, targets: list[str] | None = None,
           units: tuple[int, int] = (1, 3), stages: tuple[str, ...] = STAGES) -> Outcome:
    """Kill-and-rerun ``kills`` times, finish, and compare with an uninterrupted run.

    ``overrides_for(cache)`` gives the command's overrides for a cache folder. ``ref_dir``: an
    uninterrupted run's folder to compare with (made here, in its own cache, when None).
    ``targets``: the stages to kill in (default: drawn with ``seed`` from ``stages``). ``units``: the range of the
    number of batches (or checkpoints) an attempt finishes in the target stage before its kill.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    if ref_dir is None:
        ref_cache = workdir / "ref-cache"
        ref = Harness(workdir / "ref", overrides_for(ref_cache), ref_cache)
        ref.workdir.mkdir(exist_ok=True)
        proc = ref.start()
        if proc.wait(timeout) != 0:
            raise RuntimeError(f"the uninterrupted run failed: see {ref.logs[-1]}")
        ref_dir = ref.run_dir()
    cache = workdir / "cache"
    h = Harness(workdir, overrides_for(cache), cache)
    out = Outcome()
    pending: Kill | None = None
    targets = list(targets) if targets is not None else plan(kills, rng, stages)
    for n, target in enumerate(targets, start=1):
        proc = h.start()
        out.attempts += 1
        k = kill_at(h, proc, target, rng, timeout, units)
        if pending is not None:
            next_attempt_counts(h.progress(proc.pid), pending)
            out.kills.append(pending)
            pending = None
        if k is None:  # it finished (or failed) before the kill point
            if proc.wait(timeout) != 0:
                raise RuntimeError(f"attempt {out.attempts} failed: see {h.logs[-1]}")
            break
        k.number = n
        if verbose:
            print(f"  kill {n}: target {target}, killed in {k.stage}, saved {k.saved}", flush=True)
        pending = k
    else:
        proc = h.start()
        out.attempts += 1
        if proc.wait(timeout) != 0:
            raise RuntimeError(f"the final attempt failed: see {h.logs[-1]}")
    if pending is not None:
        next_attempt_counts(h.progress(proc.pid), pending)
        out.kills.append(pending)
    out.run_dir = h.run_dir()
    out.mismatches = compare(out.run_dir, ref_dir)
    ref_counts = {name: len((ref_dir / name).read_text().splitlines()) for name in COMPARED_FILES
                  if name.endswith(".jsonl")}
    out.lost = sum(max(c - len((out.run_dir / name).read_text().splitlines()), 0) for name, c in ref_counts.items())
    out.wandb_ids = wandb_ids(out.run_dir)
    return out


def table(out: Outcome) -> str:
    match = "yes" if not out.mismatches else "NO"
    lines = ["kill  target        killed in            saved  reused  recomputed  final match",
             "----  ------------  -------------------  -----  ------  ----------  -----------"]
    for k in out.kills:
        lines.append(f"{k.number:>4}  {k.target:<12}  {str(k.stage):<19}  {k.saved:>5}  {str(k.reused):>6}  "
                     f"{str(k.recomputed):>10}  {match:>11}" + (f"  ({k.note})" if k.note else ""))
    lines.append(f"attempts: {out.attempts}; lost items: {out.lost}; W&B run ids: {sorted(out.wandb_ids)}; "
                 f"outputs identical to an uninterrupted run: {match}")
    lines += [f"  mismatch: {m}" for m in out.mismatches]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embedded", action="store_true", help="the real SmolLM2-135M reduced quickstart (slow)")
    ap.add_argument("--workdir", type=Path, default=None, help="where runs and caches go (default: a temp folder)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per attempt")
    ap.add_argument("--optimizer", default="dpo", choices=sorted(OPTIMIZER_OVERRIDES),
                    help="tiny model: the optimizer to train with (small settings, a checkpoint every step)")
    ap.add_argument("--distilled", action="store_true",
                    help="tiny model: train a reward model on the judge's pairs first (optimizer.reward_source="
                         "reward_model; needs an online --optimizer) and kill inside that stage too")
    args = ap.parse_args(argv)
    if args.distilled and (args.embedded or args.optimizer == "dpo"):
        ap.error("--distilled needs the tiny model and an online optimizer: --optimizer grpo, rloo, online_dpo or ppo")
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rlaif-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.embedded:
        def overrides_for(cache: Path) -> list[str]:
            models = Path("~/.cache/rlaif/models").expanduser()
            if models.is_dir() and not (cache / "models").exists():  # reuse the converted model, read-only
                cache.mkdir(parents=True, exist_ok=True)
                (cache / "models").symlink_to(models)
            return embedded_overrides(cache)
    else:
        sys.path.insert(0, str(HERE))
        from conftest import build_tiny_model

        model = workdir / "tiny-model"
        if not (model / "config.json").exists():
            build_tiny_model(model)

        def overrides_for(cache: Path) -> list[str]:
            return tiny_overrides(str(model), cache, optimizer=args.optimizer, distilled=args.distilled)
    what = ("SmolLM2 reduced quickstart" if args.embedded else f"tiny model, optimizer={args.optimizer}"
            + (", distilled (reward model)" if args.distilled else ""))
    print(f"fault injection: {args.kills} kills, seed {args.seed}, {what}, in {workdir}", flush=True)
    t = time.time()
    out = inject(workdir, overrides_for, args.kills, args.seed, args.timeout,
                 stages=DISTILLED_STAGES if args.distilled else STAGES)
    print(table(out))
    print(f"{time.time() - t:.0f} s")
    ok = (not out.mismatches and out.lost == 0 and len(out.wandb_ids) == 1
          and all(k.recomputed == 0 for k in out.kills))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
