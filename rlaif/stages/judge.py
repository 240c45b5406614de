"""Stage 2: the frozen judge ranks each prompt's candidates under the criterion, in journaled
groups of ``journal.chunk_prompts`` prompts (a kill loses at most the group in progress)."""

from __future__ import annotations

from rlaif.answers import answer_logs
from rlaif.journal import Journal, add_spent
from rlaif.judges.base import rank_in_chunks
from rlaif.stages.base import Inputs, Stage
from rlaif.types import Judgment, PairwiseVerdict

# Where the judge's model or server lives and how many items it scores at once: verdicts do not
# depend on them (the model's identity is a declared input instead).
# (``judge.api.top_logprobs`` and ``extra_body`` can change verdicts, so they stay in the key.)
JUDGE_LOCATION = ("judge.model", "judge.batch_size") + tuple(
    f"judge.api.{k}" for k in ("model", "base_url", "api_key_env", "max_concurrency", "timeout_s", "max_retries",
                               "backoff_s", "max_retry_after_s", "requests_per_minute", "max_failed_share",
                               "price_per_1k_prompt", "price_per_1k_completion"))
JUDGE = Inputs(config=("judge", "criteria"), not_output=JUDGE_LOCATION, models=("judge",))


class Judge(Stage):
    name = "judge"
    INPUTS = JUDGE.plus(config=("journal.chunk_prompts",), records=("train_prompts", "candidates"))
    outputs = {"judgments": Judgment, "verdicts": PairwiseVerdict, "judge_members": dict}

    def __init__(self, journals: list[Journal]):
        self.journals = journals  # shared with the stages that call the judge later (its API spend)

    def compute(self, v, work):
        self.journals.append(work.journal("judgments"))
        judgments, verdicts, members = rank_in_chunks(v.component("judge"), v.record("train_prompts"),
                                                      v.record("candidates"),
                                                      int(v.cfg.get("journal", {}).get("chunk_prompts", 8)),
                                                      self.journals[-1])
        return {"judgments": judgments, "verdicts": verdicts,
                "judge_members": [{"name": n, "prefs": p} for n, p in members.items()]}

    def report(self, v, result):
        judgments = result["judgments"]
        # later uses of the judge (probes, evaluation) see the values an uninterrupted run kept
        v.component("judge").remember(v.record("train_prompts"), v.record("candidates"), judgments)
        valid = [j.score for j in judgments if j.valid]
        return {"judge/invalid": len(judgments) - len(valid),
                "judge/score_mean": sum(valid) / len(valid) if valid else float("nan")}


def api_spend(judge, journals: list[Journal]) -> dict[str, float]:
    """What an API judge spent in this run, with what earlier attempts' journaled batches cost."""
    backend = getattr(judge, "backend", None)
    if backend is None or not hasattr(backend, "accounting"):
        return {}
    return {f"judge/api_{k}": x for k, x in add_spent(backend.accounting(), journals + answer_logs(judge)).items()}
