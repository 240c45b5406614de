"""Best-of-n sampling: the baseline that trains nothing.

For each prompt the reference policy samples ``n`` responses and the judge keeps the one it scores
highest. It is the yardstick every RL method should beat at equal KL (Gao et al. 2022;
Stiennon et al. 2020): its KL to the reference is known in closed form, log n - (n - 1) / n nats,
and its judge calls (n per response) are the whole budget.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

from rlaif.io import write_json
from rlaif.optimizers.base import TrainContext
from rlaif.optimizers.options import RewardOptions
from rlaif.options import Count
from rlaif.types import Candidate, Prompt


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || reference) in nats for a continuous reward without ties."""
    return math.log(n) - (n - 1) / n


class BestOfNOptions(RewardOptions):
    """``optimizer=best_of_n`` (conf/optimizer/best_of_n.yaml)."""

    CONF: ClassVar[str] = "optimizer/best_of_n"
    n: Count  # samples per slot; the judge keeps its favourite


class BestOfN:
    name = "best_of_n"
    needs_pairs = False
    needs_reward = True
    trains = False  # evaluation samples n from the reference and keeps the judge's favourite

    Options = BestOfNOptions

    def __init__(self, **options):
        self.options = BestOfNOptions.build(options)
        self.n = self.options.n

    def train(self, ctx: TrainContext) -> dict[str, float]:
        """Nothing to train: record the setting so the run folder says what the 'policy' is."""
        Path(ctx.output_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(ctx.output_dir) / "best_of_n.json", {"n": self.n, "base": ctx.policy_path})
        row = {"train/n": self.n, "train/analytic_kl": best_of_n_kl(self.n)}
        ctx.log(row, step=0)
        return row

    def select(self, prompts: list[Prompt], pools: list[Candidate], reward, k: int) -> tuple[list[Candidate], dict]:
        """Keep, for each (prompt, i < k), the best-scored of its n samples (pool index i*n .. i*n+n-1).

        Samples the judge cannot score never win; when none of the n can be scored the first is
        kept and counted as ``unscored_groups``.
        """
        by_id = {p.id: p for p in prompts}
        scores = reward([by_id[c.prompt_id] for c in pools], [c.text for c in pools])
        by_key = {(c.prompt_id, c.index): (c, s) for c, s in zip(pools, scores, strict=True)}
        out, unscored = [], 0
        for p in prompts:
            for i in range(k):
                group = [by_key[(p.id, i * self.n + j)] for j in range(self.n) if (p.id, i * self.n + j) in by_key]
                if not group:
                    continue
                finite = [(s, c) for c, s in group if math.isfinite(s)]
                if finite:
                    best = max(finite, key=lambda t: t[0])[1]
                else:
                    best, unscored = group[0][0], unscored + 1
                out.append(Candidate(best.prompt_id, i, best.text, best.num_tokens, best.finished, best.model,
                                     "policy"))
        return out, {"eval/best_of_n": self.n, "eval/best_of_n_unscored_groups": unscored,
                     "eval/best_of_n_judge_calls": len(pools)}
