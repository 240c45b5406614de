"""The work both sides of a benchmark row get: deterministic prompts, responses and preference
pairs, and the workload sizes per ``--sizes``. Nothing here is timed.
"""

from __future__ import annotations

import json
from pathlib import Path

SIZES = {  # per --sizes: prompts judged x responses each, generation prompts x k, DPO pairs, PPO rollout
    "small": {"judge_prompts": 4, "judge_k": 2, "gen_prompts": 2, "gen_k": 2, "max_new_tokens": 8, "dpo_pairs": 8,
              "dpo_batch": 4, "ppo_batch": 4, "ppo_iters": 1, "matmul_n": 256},
    "default": {"judge_prompts": 16, "judge_k": 4, "gen_prompts": 8, "gen_k": 4, "max_new_tokens": 40,
                "dpo_pairs": 16, "dpo_batch": 8, "ppo_batch": 8, "ppo_iters": 1, "matmul_n": 1024},
}
WORDS = ("the film is a warm and moving story with a cast that gives every scene real life and the score "
         "lifts it further while the pacing drags in the middle and the ending feels rushed and cheap").split()

def prompts(n: int, offset: int = 0):
    from rlaif.types import Prompt

    path = Path(__file__).parents[1] / "data" / "sentiment" / "movie_openings.jsonl"
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i in range(n):
        it = items[(offset + i) % len(items)]
        out.append(Prompt(id=it["id"], text=it["text"], split="train",
                          messages=[{"role": "user", "content": f"Continue this movie review: {it['text']}"}]))
    return out


def response(i: int) -> str:
    """A deterministic response of 8 to 38 words."""
    n = 8 + (i * 7) % 31
    return " ".join(WORDS[(i + j * 3) % len(WORDS)] for j in range(n)) + "."


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def dpo_pairs(n: int):
    from rlaif.types import PreferencePair

    out = []
    for i, p in enumerate(prompts(n, offset=40)):
        out.append(PreferencePair(prompt=p.messages, chosen=[{"role": "assistant", "content": response(2 * i)}],
                                  rejected=[{"role": "assistant", "content": response(2 * i + 1)}], prompt_id=p.id,
                                  chosen_index=0, rejected_index=1, chosen_score=1.0, rejected_score=0.0, margin=1.0,
                                  judge="bench", criterion="positive_sentiment"))
    return out
