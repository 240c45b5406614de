"""Do two versions of the code give the same runs? For refactors that must not change outputs.

    # in a checkout of the old version, then in the new one (same machine):
    PYTHONPATH=<old checkout> python tests/same_outputs.py run /tmp/before
    PYTHONPATH=<new checkout> python tests/same_outputs.py run /tmp/after
    python tests/same_outputs.py diff /tmp/before /tmp/after

``run`` executes a set of tiny configs with the cache off (DPO with diagnostics probes, a pairwise
judge with best-of-n, PPO against a distilled reward model, GRPO, constitutional SFT, and a
replay of the DPO run) on the tiny model of tests/conftest.py, each into its own run folder.
``diff`` compares the folders: every record file byte for byte (after replacing the checkout
and output paths, which records name), summary.json outside ``time/*`` and ``cache/*``,
diagnostics.json and the training curves without wall-clock keys. It prints each difference and
exits 1 if there is one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORDS = ["prompts", "candidates", "judgments", "verdicts", "judge_members", "preferences", "eval_reference",
           "eval_samples"]
CLOCK = ("_runtime", "_per_second", "step_time")

BASE = ["tracker=none", "data.num_train=6", "data.num_eval=3", "generator.num_candidates=3",
        "generator.max_new_tokens=8", "generator.dtype=float32", "judge.dtype=float32",
        "evaluation.samples_per_prompt=2", "diagnostics.probe_items=4", "cache.enabled=false"]
DPO = ["optimizer.epochs=1", "optimizer.batch_size=4", "optimizer.learning_rate=1e-3", "optimizer.mixed_precision=no"]
PPO = ["optimizer=ppo", "optimizer.learning_rate=1e-3", "optimizer.total_episodes=12", "optimizer.rollout_batch_size=6",
       "optimizer.ppo_epochs=1", "optimizer.num_minibatches=1"]
CONFIGS = {
    "dpo": DPO,
    "pairwise_best_of_n": ["judge=pairwise", "optimizer=best_of_n", "optimizer.n=2",
                           "optimizer.reward_reference=reference_policy"],
    "ppo_distilled": PPO + ["optimizer.reward_source=reward_model", "reward_model.epochs=1",
                            "reward_model.batch_size=4", "reward_model.eval_fraction=0"],
    "grpo": ["optimizer=grpo", "optimizer.learning_rate=1e-3", "optimizer.max_steps=1", "optimizer.batch_size=6",
             "optimizer.num_generations=3"],
    "cai_sft": ["optimizer=cai_sft", "optimizer.learning_rate=1e-3", "optimizer.epochs=1", "optimizer.batch_size=4",
                "optimizer.critique_max_new_tokens=6", "criteria=constitution"],
}


def run_all(root: Path) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    sys.path.insert(0, str(HERE))
    from conftest import build_tiny_model, compose_config

    from rlaif.pipeline import run

    root.mkdir(parents=True, exist_ok=True)
    model = root / "tiny"
    if not model.exists():
        build_tiny_model(model)
    base = [f"policy.model={model}", f"cache.dir={root / 'cache'}", *BASE]
    for name, overrides in CONFIGS.items():
        shutil.rmtree(root / name, ignore_errors=True)
        run(compose_config(base + overrides), output_dir=root / name)
    shutil.rmtree(root / "replay", ignore_errors=True)
    run(compose_config(base + DPO + [f"replay={root / 'dpo'}", "optimizer.beta=0.2"]), output_dir=root / "replay")


def _normalised(path: Path, root: Path) -> bytes:
    import rlaif

    text = path.read_bytes().replace(str(root).encode(), b"<root>")
    text = text.replace(str(Path(rlaif.__file__).resolve().parents[1]).encode(), b"<checkout>")
    text = re.sub(rb"/[^\"]*/rlaif/data/", b"<checkout>/rlaif/data/", text)
    return re.sub(rb"local:[^\"]*", b"local:<model>", text)  # a local model's identity names its folder


def diff(a: Path, b: Path) -> int:
    problems = []
    for name in [*CONFIGS, "replay"]:
        x, y = a / name, b / name
        for rec in RECORDS:
            fx, fy = x / f"{rec}.jsonl", y / f"{rec}.jsonl"
            if fx.exists() != fy.exists():
                problems.append(f"{name}: {rec}.jsonl exists in only one")
            elif fx.exists() and _normalised(fx, a) != _normalised(fy, b):
                problems.append(f"{name}: {rec}.jsonl differs")
        keep = lambda s: {k: v for k, v in s.items() if not k.startswith(("time/", "cache/"))}  # noqa: E731
        sx, sy = (keep(json.loads((d / "summary.json").read_text())) for d in (x, y))
        problems += [f"{name}: summary[{k}] {sx.get(k)!r} vs {sy.get(k)!r}" for k in sorted(sx.keys() | sy.keys())
                     if sx.get(k) != sy.get(k)]
        if (x / "diagnostics.json").exists() and \
                json.loads((x / "diagnostics.json").read_text()) != json.loads((y / "diagnostics.json").read_text()):
            problems.append(f"{name}: diagnostics.json differs")
        hx, hy = ([{k: v for k, v in json.loads(line).items() if not k.endswith(CLOCK)}
                   for line in (d / "train_history.jsonl").read_text().splitlines()] for d in (x, y))
        if hx != hy:
            problems.append(f"{name}: train_history.jsonl differs")
    print("\n".join(problems) or f"the same: records, summaries, diagnostics and training curves of "
                                 f"{len(CONFIGS) + 1} runs")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run_all(Path(sys.argv[2]).resolve())
    elif len(sys.argv) == 4 and sys.argv[1] == "diff":
        sys.exit(diff(Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()))
    else:
        sys.exit(__doc__)
