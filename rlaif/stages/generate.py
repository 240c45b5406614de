"""Stage 1: sample k candidates per training prompt from the generator (journaled batches)."""

from __future__ import annotations

import inspect
import logging

from rlaif.answers import answer_logs
from rlaif.journal import Journal, add_spent, spent_since
from rlaif.replay import LOCATION
from rlaif.stages.base import Inputs, Stage
from rlaif.types import Candidate, Prompt

log = logging.getLogger(__name__)

# Where the generator's model or server lives, and how patiently it is asked: none of it changes
# which candidates come back (the model's identity is a declared input instead).
GENERATOR_LOCATION = tuple(f"generator.{k}" for k in LOCATION["generator"]) + (
    "generator.max_retry_after_s", "generator.max_failed_share", "generator.price_per_1k_prompt",
    "generator.price_per_1k_completion")


class Generate(Stage):
    name = "generate"
    INPUTS = Inputs(config=("generator", "seed", "journal.chunk_prompts"),
                    not_output=GENERATOR_LOCATION + ("journal.chunk_prompts",),  # API groups: same samples
                    records=("train_prompts",), models=("generator",))
    outputs = {"candidates": Candidate}

    def __init__(self):
        self.journals: list[Journal] = []
        self.failures = 0

    def compute(self, v, work):
        self.journals.append(work.journal("candidates"))
        cands, self.failures = sample_resumable(v.component("generator"), v.pool, v.record("train_prompts"),
                                                int(v.cfg.seed), self.journals[-1],
                                                int(v.cfg.get("journal", {}).get("chunk_prompts", 8)))
        return {"candidates": cands}

    def report(self, v, result):
        if self.failures:
            log.warning("generate: %d requests failed after retries; those candidates are missing", self.failures)
        generator = v.component("generator")
        acct = {}  # this attempt's spend plus that of the batches earlier attempts had finished
        if generator is not None and hasattr(generator, "accounting"):
            acct = add_spent(generator.accounting(), self.journals + answer_logs(generator))
        cands = result["candidates"]
        return {**{f"generate/api_{k}": x for k, x in acct.items()},
                "generate/candidates": len(cands),
                "generate/mean_tokens": sum(c.num_tokens for c in cands) / max(len(cands), 1),
                "generate/finished_rate": sum(c.finished for c in cands) / max(len(cands), 1)}


def sample_resumable(generator, pool, prompts: list[Prompt], seed: int, journal: Journal,
                     chunk: int) -> tuple[list[Candidate], int]:
    """All candidates for ``prompts``, journaled; returns (candidates, failed requests).

    A generator whose ``sample`` takes a journal (HFGenerator) journals its own seeded batches;
    any other is called on groups of ``chunk`` prompts, which is the same as one call because its
    samples do not depend on which prompts share a call (the API generator seeds each request
    from (seed, candidate index)). An API batch in which a request failed is not journaled; its
    answered requests are, one by one, so a rerun sends only the failed ones. More failures than
    ``generator.max_failed_share`` stop the run once every batch was tried.
    """
    if "journal" in inspect.signature(generator.sample).parameters:
        cands = generator.sample(pool, prompts, seed=seed, desc="generate candidates", journal=journal)
        return cands, int(getattr(generator, "failures", 0) or 0)
    client = getattr(generator, "client", None)
    answers = None
    if hasattr(client, "record_answers"):
        from rlaif.backends.api import AnswerLog
        from rlaif.judges.base import answers_journal_path

        answers = AnswerLog(Journal(answers_journal_path(journal)))
        client.record_answers(answers)
        start = (client.requests, client.failures)
    try:
        out, failures = _sample_groups(generator, pool, prompts, seed, journal, chunk, answers)
    finally:
        if answers is not None:
            client.record_answers(None)
    if answers is not None:
        client.check_failures(client.failures - start[1], client.requests - start[0], "generation requests",
                              "generator.max_failed_share")
    return out, failures + int(journal.reused_spent.get("failures", 0))


def _sample_groups(generator, pool, prompts, seed, journal, chunk, answers) -> tuple[list[Candidate], int]:
    out: list[Candidate] = []
    failures = 0
    accounting = getattr(generator, "accounting", None)  # API generators count their spend per batch
    for n, first in enumerate(range(0, len(prompts), chunk)):
        ps = prompts[first : first + chunk]
        items = [p.id for p in ps]
        done = journal.lookup(n, items)
        if done is None:
            before = accounting() if accounting is not None else None
            replayed = dict(answers.journal.reused_spent) if answers is not None else {}
            cs = generator.sample(pool, ps, seed=seed, desc=f"generate candidates ({first + len(ps)}/{len(prompts)})")
            failed = int(getattr(generator, "failures", 0) or 0)
            failures += failed
            done = [c.to_dict() for c in cs]
            if not failed:  # a batch with missing candidates is never recorded as finished
                spent = spent_since(accounting, before)
                if spent is not None and answers is not None:  # answers of earlier attempts it reused
                    for k, x in answers.journal.reused_spent.items():
                        if k in spent:
                            spent[k] += x - replayed.get(k, 0)
                journal.append(n, items, done, spent=spent)
        out += [Candidate.from_dict(row) for row in done]
    return out, failures
