"""What every optimizer gets and gives back.

An optimizer turns the starting policy into a trained one. Offline methods (DPO) read the
preference pairs the judge labelled; online methods (PPO, GRPO, RLOO, online DPO, ...) sample from
the policy as it learns and call ``ctx.reward`` on what it writes. Every optimizer saves a plain
safetensors folder (LoRA merged) that evaluation loads like any other model, and logs through
``ctx.log`` so the run folder, W&B and ``rlaif-compare`` see the same rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rlaif.types import PreferencePair, Prompt


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite; training stopped (the last good checkpoint is kept)."""


class RewardFunction(Protocol):
    """Scores completions for prompts, higher is better; NaN where the judge could not score one."""

    def __call__(self, prompts: list[Prompt], completions: list[str]) -> list[float]: ...


@dataclass
class Budget:
    """What a matched comparison holds equal across optimizers (None: the optimizer's own settings).

    ``judge_calls``: responses the judge scores during training (offline labelling included).
    ``generated_tokens``: tokens the policy samples during training (offline candidates included).
    """

    judge_calls: int | None = None
    generated_tokens: int | None = None


@dataclass
class TrainContext:
    policy_path: str  # the starting policy: a local safetensors folder (also the frozen reference)
    output_dir: Path  # save the trained policy here (save_pretrained + tokenizer)
    seed: int
    prompts: list[Prompt]  # training prompts; ``messages`` is the chat the policy sees
    pairs: list[PreferencePair] = field(default_factory=list)  # offline AI preferences (may be empty)
    reward: RewardFunction | None = None  # the judge as a pointwise reward (online methods)
    judge: Any = None  # the run's judge (self-rewarding and CAI use its criterion)
    criterion: Any = None
    gold: Any = None  # the task's gold scorer, when it has one: for logging only, never a training signal
    tracker: Any = None
    trust_remote_code: bool = False
    checkpoint_dir: Path | None = None  # survives kills: resume from the newest checkpoint here
    max_new_tokens: int = 32  # response length for online sampling (the generator's setting)
    temperature: float = 1.0
    top_p: float = 1.0
    budget: Budget = field(default_factory=Budget)
    history: list[dict[str, float]] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=lambda: {"judge_calls": 0, "generated_tokens": 0})

    def log(self, row: dict[str, float], step: int | None = None) -> None:
        """Record one row of training metrics (keys ``train/...``) in the history and the tracker."""
        row = {k if k.startswith("train/") else f"train/{k}": v for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if step is not None:
            row["train/step"] = step
        self.history.append(row)
        if self.tracker is not None:
            self.tracker.log(row)

    def check_finite(self, name: str, value: float, step: int, hint: str) -> None:
        if not math.isfinite(value):
            where = f"; the last good checkpoint is in {self.checkpoint_dir}" if self.checkpoint_dir else ""
            raise NonFiniteLossError(f"{name} became {value} at step {step}{where}. {hint}")

    def write_history(self, path: Path) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in self.history))


class Optimizer(Protocol):
    name: str
    needs_pairs: bool  # reads ctx.pairs (offline preference data)
    needs_reward: bool  # calls ctx.reward on its own samples (needs a pointwise reward)
    # Optional ``reads``: run config paths it uses beyond ``optimizer`` ("criteria", "data.gold"); the
    # training stage gets ctx.criterion / ctx.gold only when they are listed, and keys its cache entry on them.

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Train, save the policy to ``ctx.output_dir``, return the final metrics (``train/...``)."""
        ...


class JudgeReward:
    """A judge as a pointwise reward function, counting calls and unscorable items.

    Pointwise judges score each completion; comparative judges (pairwise, generative) score
    P(completion beats the reference response for that prompt), so they need ``references``.
    """

    def __init__(self, judge, references: dict[str, str] | None = None, counters: dict | None = None):
        if not judge.pointwise and not references:
            raise ValueError(f"the {judge.kind} judge compares pairs: an online optimizer needs reference responses "
                             "to compare against (set optimizer.reward_reference: reference_policy)")
        self.judge, self.references = judge, references or {}
        self.counters = counters if counters is not None else {}
        self.__name__ = f"judge_{judge.kind}"  # TRL logs reward functions by name

    def __call__(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        if self.judge.pointwise:
            vals = self.judge.scores(prompts, completions)
        else:
            vals = self.judge.prefer(prompts, completions, [self.references[p.id] for p in prompts])
        out = [float(v) if v is not None and math.isfinite(v) else float("nan") for v in vals]
        self.counters["judge_calls"] = self.counters.get("judge_calls", 0) + len(out)
        self.counters["unscorable"] = self.counters.get("unscorable", 0) + sum(not math.isfinite(v) for v in out)
        return out


def trl_reward(reward: RewardFunction, prompts: list[Prompt]) -> Callable:
    """Adapt a RewardFunction to TRL's ``reward_funcs`` signature (prompts as chats, completions as chats)."""
    import json as _json

    by_chat = {_json.dumps(p.messages, sort_keys=True): p for p in prompts}

    def fn(prompts, completions, **_kw):
        ps = []
        for i, chat in enumerate(prompts):
            key = _json.dumps(list(chat), sort_keys=True) if not isinstance(chat, str) else None
            if key in by_chat:
                ps.append(by_chat[key])
            else:
                msgs = [{"role": "user", "content": chat}] if isinstance(chat, str) else list(chat)
                ps.append(Prompt(id=f"online-{i}", text=msgs[-1]["content"], messages=msgs, split="train"))
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return reward(ps, texts)

    fn.__name__ = getattr(reward, "__name__", "judge")
    return fn


def save_policy(model, tokenizer, output_dir: Path) -> None:
    """Save a plain safetensors policy folder; LoRA adapters are merged first. In a multi-process
    launch only process 0 saves (every process holds the same weights)."""
    from rlaif import distributed

    if not distributed.is_main():
        return
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)


def lora_config(lora: dict | None):
    if not (lora or {}).get("enabled"):
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.get("r", 16), lora_alpha=lora.get("alpha", 32), lora_dropout=lora.get("dropout", 0.0),
                      target_modules=lora.get("target_modules", "all-linear"), task_type="CAUSAL_LM")
