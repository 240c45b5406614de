"""The judge interface.

Every judge, whatever its kind, offers the same four uses:

* ``rank(prompts, candidates)`` -> one ``Judgment`` per candidate (plus pairwise verdicts when the
  kind compares pairs): labelling offline preference data;
* ``prefer(prompts, a, b)`` -> P(a better than b) per item: evaluation win rates;
* ``__call__(prompts, completions, **kwargs)`` -> list[float]: a TRL reward function;
* ``best_of(prompts, candidates)`` -> index of the best candidate per prompt.

Pointwise kinds implement ``score``; comparative kinds implement ``compare`` and override
``rank``. A judge never trains: it holds frozen weights for the whole run.

The pipeline labels preference data with ``rank_in_chunks``: ``rank`` on groups of prompts, each
group recorded in a journal so that a killed run resumes after the last finished group. A
group's verdicts depend only on its own prompts and candidates (pointwise scores are per
candidate, comparisons stay within a prompt, a pairwise judge's ``swap_fraction`` picks pairs
by hashing (seed, prompt, texts)), so resuming gives the same labels as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Annotated

from pydantic import Field

from rlaif.criteria import Criterion
from rlaif.options import Count, Dtype, Engine, Options
from rlaif.types import Candidate, Judgment, PairwiseVerdict, Prompt

Seed = Annotated[int, Field(ge=0)]


class ModelJudgeOptions(Options):
    """The options of every judge that runs a model: which one, in what dtype, how many sequences at once."""

    model: str
    dtype: Dtype
    batch_size: Count


class LanguageJudgeOptions(ModelJudgeOptions):
    """A judge that reads a language model's probabilities or text, and the engine that runs it:
    transformers, vllm, or auto (vllm when the run's generator is vllm, else transformers)."""

    engine: Engine


def with_given(options: dict, **explicit) -> dict:
    """``options`` plus the explicit (positional) arguments that were passed; None = not given (the YAML's)."""
    return {**options, **{k: v for k, v in explicit.items() if v is not None}}


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


class Judge:
    kind: str = "base"
    wording: tuple[str, ...] = ()  # the criterion's keys it reads (rlaif.criteria.required_wording)
    pointwise: bool = True

    # Pointwise scores are memoised per (chat, response), each with the details the judge recorded
    # for it: probes and evaluation re-score the same texts, and a judge's weights never change
    # during a run. Bounded so long runs stay small.
    MEMO_LIMIT = 100_000

    def __init__(self, criterion: Criterion, name: str | None = None):
        self.criterion = criterion
        self._name = name
        self._memo: dict[tuple[str, str], tuple[float | None, dict]] = {}

    def scores(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        """``score`` with memoisation; only unseen (prompt, response) pairs reach the model."""
        return self.scored(prompts, responses)[0]

    def scored(self, prompts: list[Prompt], responses: list[str]) -> tuple[list[float | None], list[dict]]:
        """Scores and their details, one per item, memoised together: a repeated or already seen
        (prompt, response) gets the details of its own score, never those of another item."""
        memo = getattr(self, "_memo", None)
        if memo is None:  # a subclass that skipped Judge.__init__
            return self.score_details(prompts, responses)
        keys = [(json.dumps(p.messages, sort_keys=True), r) for p, r in zip(prompts, responses, strict=True)]
        known = {k: memo[k] for k in keys if k in memo}
        todo = list(dict.fromkeys(k for k in keys if k not in known))
        if todo:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            vals, details = self.score_details([prompts[first[k]] for k in todo], [k[1] for k in todo])
            known.update(zip(todo, zip(vals, details, strict=True), strict=True))
            if len(memo) + len(todo) > self.MEMO_LIMIT:
                memo.clear()
            memo.update({k: known[k] for k in todo})
        return [known[k][0] for k in keys], [dict(known[k][1]) for k in keys]

    def remember(self, prompts: list[Prompt], candidates: list[Candidate], judgments: list[Judgment]) -> None:
        """Put scores this judge gave earlier (read back from a journal or the cache) into the memo.

        An uninterrupted run keeps every score of the labelling stage in memory, and probes,
        evaluation and online rewards reuse them; a resumed run must see the same values, not
        values recomputed in differently composed batches. Pointwise judges only (a judgment's
        score is then the judge's score of that response).
        """
        memo = getattr(self, "_memo", None)
        if not self.pointwise or memo is None:
            return
        by_id = {p.id: p for p in prompts}
        text = {(c.prompt_id, c.index): c.text for c in candidates}
        for j in judgments:
            if j.prompt_id in by_id and (j.prompt_id, j.index) in text and len(memo) < self.MEMO_LIMIT:
                details = {k: v for k, v in j.details.items() if k != "invalid"}  # rank adds it again
                memo.setdefault((json.dumps(by_id[j.prompt_id].messages, sort_keys=True), text[(j.prompt_id, j.index)]),
                                (j.score, details))

    @property
    def name(self) -> str:
        return self._name or self.kind

    @property
    def identity(self) -> str:
        """What the judge's verdicts depend on besides its config: the model's identity, if any."""
        backend = getattr(self, "backend", None)
        return backend.identity if backend is not None else self.name

    # -- to implement -------------------------------------------------------------------------
    def score(self, prompts: list[Prompt], responses: list[str]) -> list[float | None]:
        raise NotImplementedError(f"{type(self).__name__} does not give pointwise scores")

    def score_details(self, prompts: list[Prompt], responses: list[str]) -> tuple[list[float | None], list[dict]]:
        """``score`` and what the judge recorded per item (kinds with details override this)."""
        return self.score(prompts, responses), [{} for _ in responses]

    def compare(self, prompts: list[Prompt], a: list[str], b: list[str]) -> list[tuple[float | None, float | None]]:
        """(P(a better | a first), P(a better | a second)) per item."""
        raise NotImplementedError(f"{type(self).__name__} does not compare pairs")

    # -- shared uses --------------------------------------------------------------------------
    def rank(self, prompts: list[Prompt], candidates: list[Candidate]) -> tuple[list[Judgment], list[PairwiseVerdict]]:
        by_id = {p.id: p for p in prompts}
        scores, details = self.scored([by_id[c.prompt_id] for c in candidates], [c.text for c in candidates])
        judgments = [
            Judgment(c.prompt_id, c.index, s if _finite(s) else None, self.name, self.criterion.name,
                     d if _finite(s) else {**d, "invalid": f"score was {s!r}"})
            for c, s, d in zip(candidates, scores, details, strict=True)
        ]
        return judgments, []

    def prefer(self, prompts: list[Prompt], a: list[str], b: list[str]) -> list[float | None]:
        if self.pointwise:
            sa, sb = self.scores(prompts, a), self.scores(prompts, b)
            return [None if not (_finite(x) and _finite(y)) else (1.0 if x > y else 0.0 if x < y else 0.5)
                    for x, y in zip(sa, sb, strict=True)]
        results = self.compare(prompts, a, b)
        swapped = getattr(self, "last_swapped", None) or [True] * len(results)
        out = []
        for (first, second), both in zip(results, swapped, strict=True):
            if not both:  # judged in one order only (swap_fraction < 1)
                out.append(first if _finite(first) else None)
            else:
                out.append(None if not (_finite(first) and _finite(second)) else 0.5 * (first + second))
        return out

    def best_of(self, prompts: list[Prompt], candidates: list[Candidate]) -> dict[str, int]:
        judgments, _ = self.rank(prompts, candidates)
        best: dict[str, tuple[float, int]] = {}
        for j in judgments:
            if j.valid and (j.prompt_id not in best or j.score > best[j.prompt_id][0]):
                best[j.prompt_id] = (j.score, j.index)
        return {pid: idx for pid, (_, idx) in best.items()}

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        """TRL reward function. Prompts/completions may be strings or conversational messages.

        Comparative judges need ``reference`` completions in kwargs and return P(completion better).
        Unscorable items become NaN, which TRL's trainers ignore in their reward aggregation.
        """
        ps = [_as_prompt(p, i) for i, p in enumerate(prompts)]
        cs = [_as_text(c) for c in completions]
        if self.pointwise:
            vals = self.score(ps, cs)
        else:
            ref = kwargs.get("reference")
            if ref is None:
                raise ValueError(f"the {self.kind} judge compares pairs: pass reference=<completions> to use it as a reward")
            vals = self.prefer(ps, cs, [_as_text(r) for r in ref])
        return [float(v) if _finite(v) else float("nan") for v in vals]


def _as_text(c) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):
        return c[-1].get("content", "")
    raise TypeError(f"cannot read a completion of type {type(c).__name__}")


def _as_prompt(p, i: int) -> Prompt:
    if isinstance(p, Prompt):
        return p
    if isinstance(p, str):
        return Prompt(id=str(i), text=p, messages=[{"role": "user", "content": p}], split="online")
    if isinstance(p, list):
        user = [m["content"] for m in p if m.get("role") == "user"]
        return Prompt(id=str(i), text=user[-1] if user else "", messages=list(p), split="online")
    raise TypeError(f"cannot read a prompt of type {type(p).__name__}")


def rank_by_pairs(judge: Judge, prompts: list[Prompt], candidates: list[Candidate]):
    """Rank k candidates per prompt with a comparative judge: every pair, both orders.

    A candidate's score is its mean order-debiased win probability over its comparisons.
    """
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_prompt[c.prompt_id].append(c)
    by_id = {p.id: p for p in prompts}
    jobs = []
    for pid, cs in by_prompt.items():
        cs = sorted(cs, key=lambda c: c.index)
        for i in range(len(cs)):
            for j in range(i + 1, len(cs)):
                jobs.append((pid, cs[i], cs[j]))
    results = judge.compare([by_id[p] for p, _, _ in jobs], [a.text for _, a, _ in jobs], [b.text for _, _, b in jobs])
    swapped = getattr(judge, "last_swapped", None) or [True] * len(jobs)
    details = getattr(judge, "last_details", None) or [{} for _ in jobs]
    verdicts = []
    wins: dict[tuple[str, int], list[float]] = defaultdict(list)
    for (pid, a, b), (first, second), both, det in zip(jobs, results, swapped, details, strict=True):
        v = PairwiseVerdict(pid, a.index, b.index, first if _finite(first) else None,
                            second if _finite(second) else None, judge.name, judge.criterion.name, both, det)
        verdicts.append(v)
        if v.p_a is not None:
            wins[(pid, a.index)].append(v.p_a)
            wins[(pid, b.index)].append(1.0 - v.p_a)
    judgments = []
    for c in candidates:
        w = wins.get((c.prompt_id, c.index))
        judgments.append(Judgment(c.prompt_id, c.index, sum(w) / len(w) if w else None, judge.name,
                                  judge.criterion.name, {"comparisons": len(w or [])}))
    return judgments, verdicts


def api_clients(judge) -> list:
    """The HTTP clients behind a judge (its own backend's, and its members' for a panel or a
    multi-criterion judge): what ``rank_in_chunks`` watches for failed requests."""
    out: list = []

    def visit(j, depth: int = 0) -> None:
        client = getattr(getattr(j, "backend", None), "client", None)
        if hasattr(client, "check_failures") and all(client is not c for c in out):
            out.append(client)
        for group in ("members", "judges"):
            subs = getattr(j, group, None)
            if isinstance(subs, dict) and depth < 4:
                for sub in subs.values():
                    visit(sub, depth + 1)

    visit(judge)
    return out


def answers_journal_path(journal) -> Path:
    """Where the single answers of an API stage are journaled, beside the stage's batch journal."""
    return journal.path.with_name(f"{journal.path.stem}_answers.jsonl")


def rank_in_chunks(judge: Judge, prompts: list[Prompt], candidates: list[Candidate], chunk_prompts: int,
                   journal=None, setting: str = "judge.api.max_failed_share"
                   ) -> tuple[list[Judgment], list[PairwiseVerdict], dict[str, list[float | None]]]:
    """``judge.rank`` over groups of ``chunk_prompts`` prompts, each group journaled when finished.

    Returns the judgments and verdicts (in candidate / comparison order, as one ``rank`` call
    would give them) and, for a panel, each member's preference per verdict (``last_member_prefs``
    concatenated over the groups). Groups found in ``journal`` are read back, not judged again.

    An API judge's group in which a request failed (no answer after the retries) is not journaled:
    its answered requests are (one line each, beside ``journal``), so a rerun sends only the failed
    ones and labels the group as an uninterrupted run would. When more than ``max_failed_share``
    of the requests failed, ``RequestsFailed`` is raised once every group was tried (``setting``
    names the config key in its message); otherwise the failed items are kept as invalid.
    """
    from rlaif import progress
    from rlaif.answers import answers_journaled

    groups = _groups(prompts, candidates, max(int(chunk_prompts), 1), journal)
    judgments: list[Judgment] = []
    verdicts: list[PairwiseVerdict] = []
    members: dict[str, list[float | None]] = {}
    bar = progress.bar(sum(len(g[2]) for g in groups), "judge candidates", "cand",
                       initial=sum(len(g[2]) for g in groups if g[4] is not None))  # resumed groups count as done
    path = answers_journal_path(journal) if journal is not None else None
    with answers_journaled([(judge, setting)], path) as answers:  # raises RequestsFailed after the last group
        try:
            for n, ps, cs, items, done in groups:
                rec = done[0] if done is not None else _rank_group(judge, n, ps, cs, items, journal, answers)
                if done is None:
                    bar.update(len(cs))
                judgments += [Judgment.from_dict(d) for d in rec["judgments"]]
                verdicts += [PairwiseVerdict.from_dict(d) for d in rec["verdicts"]]
                for name, prefs in rec["members"].items():
                    members.setdefault(name, []).extend(prefs)
        finally:
            bar.close()
    return judgments, verdicts, members


def _groups(prompts: list[Prompt], candidates: list[Candidate], chunk_prompts: int, journal) -> list[tuple]:
    """(number, prompts, candidates, items, journaled records or None) per group of prompts."""
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_prompt[c.prompt_id].append(c)
    groups = []
    for n, start in enumerate(range(0, len(prompts), chunk_prompts)):
        ps = prompts[start : start + chunk_prompts]
        cs = [c for p in ps for c in by_prompt.get(p.id, [])]
        if cs:
            items = [[c.prompt_id, c.index] for c in cs]
            groups.append((n, ps, cs, items, journal.lookup(n, items) if journal is not None else None))
    return groups


def _rank_group(judge: Judge, n: int, ps, cs, items, journal, answers) -> dict:
    """One group judged; journaled (with what it cost an API judge) unless one of its requests failed."""
    accounting = getattr(getattr(judge, "backend", None), "accounting", None)  # API judges count their spend
    before = accounting() if accounting is not None else None
    replayed, failed_before = answers.reused(), answers.failures()
    js, vs = judge.rank(ps, cs)
    rec = {"judgments": [j.to_dict() for j in js], "verdicts": [v.to_dict() for v in vs],
           "members": dict(getattr(judge, "last_member_prefs", None) or {}) if vs else {}}
    if journal is not None and answers.failures() == failed_before:
        journal.append(n, items, [rec], spent=answers.spent(accounting, before, replayed))
    return rec
