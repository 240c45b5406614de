"""Stage 4: judge-bias diagnostics (position, length, self-preference, agreement with gold, panel
agreement) and the probes that call the judge on edited pairs; then the plot and tables."""

from __future__ import annotations

import math
from typing import Any

from rlaif import progress
from rlaif.answers import Answers, answers_journaled
from rlaif.diagnostics import (
    compute_diagnostics,
    diagnostics_plot,
    injection_probe,
    inter_judge_agreement,
    swap_probe,
    verbosity_probe,
)
from rlaif.io import write_json
from rlaif.journal import Journal, spent_since
from rlaif.stages.base import Stage
from rlaif.stages.judge import JUDGE
from rlaif.stages.preferences import gold_by_candidate
from rlaif.types import PreferencePair, Prompt


class Diagnostics(Stage):
    name = "diagnostics"
    INPUTS = JUDGE.plus(config=("diagnostics.probe_items", "diagnostics.plot", "evaluation.table_rows"),
                        not_output=("diagnostics.plot", "evaluation.table_rows"),
                        records=("train_prompts", "candidates", "judgments", "verdicts", "judge_members",
                                 "preferences", "gold"),
                        models=("policy",))
    outputs = {"diagnostics": dict}

    def __init__(self, journals: list[Journal]):
        self.journals = journals  # the judge's journals: probes add theirs (the judge's API spend)

    def compute(self, v, work):
        prompts, candidates, pairs = v.record("train_prompts"), v.record("candidates"), v.record("preferences")
        swapped = [x for x in v.record("verdicts") if x.swapped]  # only pairs judged in both orders show position bias
        members = {row["name"]: row["prefs"] for row in v.record("judge_members")}
        d = compute_diagnostics(prompts, candidates, v.record("judgments"), swapped,
                                gold_by_candidate(v.record("gold")) or None, v.model("judge"), v.model("policy"))
        if len(members) >= 2:  # a panel just ranked the candidates: how far do its members agree?
            ija = inter_judge_agreement(members)
            d.update({f"judge/panel_{k}": x for k, x in ija.items() if k in ("mean_agreement", "mean_cohen_kappa")})
        items = int(v.cfg.diagnostics.probe_items)
        if items > 0 and pairs:  # probes call the judge: cached with the rest
            self.journals.append(work.journal("probes"))  # each finished probe survives a kill
            d.update(run_probes(v.component("judge"), prompts, pairs, items, self.journals[-1]))
        return {"diagnostics": [d]}

    def report(self, v, result):
        diag = result["diagnostics"][0]
        write_json(v.out / "diagnostics.json", diag)
        v.tracker.table("judge/diagnostics_table", ["metric", "value"], [[k, x] for k, x in sorted(diag.items())])
        verdicts = v.record("verdicts")
        if verdicts:
            v.tracker.table("judge/verdicts", ["prompt_id", "a", "b", "p_a_first", "p_a_second"],
                            [[x.prompt_id, x.a, x.b, x.p_a_first, x.p_a_second]
                             for x in verdicts[: int(v.cfg.evaluation.table_rows)]])
        if v.cfg.diagnostics.plot:
            judge = v.component("judge")
            png = diagnostics_plot(v.record("candidates"), v.record("judgments"), verdicts, v.out / "diagnostics.png",
                                   title=f"{judge.name} / {judge.criterion.name}")
            v.tracker.image("judge/diagnostics", png)
        return dict(diag)


def _finite_or_none(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def run_probes(judge, prompts: list[Prompt], pairs: list[PreferencePair], items: int,
               journal: Journal | None = None) -> dict[str, float]:
    """Verbosity, injection and (comparative judges) swap probes on the first preference pairs.

    With ``journal``, each finished probe is recorded (with what it cost an API judge), so a rerun
    after a kill asks the judge only for the probes that had not finished. An API judge's answers
    are journaled one by one beside it: a probe in which a request failed is not recorded, its
    rerun sends only the failed requests, and more failures than ``judge.api.max_failed_share``
    raise ``RequestsFailed`` once every probe was tried."""
    if journal is None:
        return _probes(judge, prompts, pairs, items, None, None)
    from rlaif.judges.base import answers_journal_path

    with answers_journaled([(judge, "judge.api.max_failed_share")], answers_journal_path(journal)) as answers:
        return _probes(judge, prompts, pairs, items, journal, answers)


def _probes(judge, prompts: list[Prompt], pairs: list[PreferencePair], items: int, journal: Journal | None,
            answers: Answers | None) -> dict[str, float]:
    by_id = {p.id: p for p in prompts}
    pairs = pairs[:items]
    ps = [by_id[p.prompt_id] for p in pairs]
    chosen = [p.chosen[0]["content"] for p in pairs]
    rejected = [p.rejected[0]["content"] for p in pairs]
    accounting = getattr(getattr(judge, "backend", None), "accounting", None)
    items_id = [[p.prompt_id, p.chosen_index, p.rejected_index] for p in pairs]

    def probe(name: str, fn) -> dict:
        done = journal.lookup(name, items_id) if journal is not None else None
        if done is not None:
            return done[0]
        before = accounting() if accounting is not None else None
        replayed = answers.reused() if answers is not None else {}
        failed = answers.failures() if answers is not None else 0
        result = {k: _finite_or_none(x) for k, x in fn().items()}
        if answers is not None and answers.failures() > failed:  # a probe with a failed request is redone
            return result
        if journal is not None:
            spent = (answers.spent(accounting, before, replayed) if answers is not None
                     else spent_since(accounting, before))
            journal.append(name, items_id, [result], spent=spent)
        return result

    probe = progress.counted(probe, progress.bar(2 if judge.pointwise else 3, "diagnostics probes", "probe"))
    return _probe_metrics(judge, probe, ps, chosen, rejected)


def _probe_metrics(judge, probe, ps, chosen, rejected) -> dict[str, float]:
    def value(x):
        return float("nan") if x is None else x

    out = {}
    for k, x in probe("verbosity", lambda: verbosity_probe(judge, ps, rejected, other=chosen)).items():
        if k in ("padded_win_rate", "mean_shift", "raise_rate", "flip_rate", "score_shift", "score_shift_std"):
            out[f"judge/probe_verbosity_{k}"] = value(x)
    for k, x in probe("injection", lambda: injection_probe(judge, ps, chosen, rejected)).items():
        if k.endswith(("flip_rate", "mean_shift", "score_shift", "score_shift_std")):
            out[f"judge/probe_injection_{k.replace('/', '_')}"] = value(x)
    if not judge.pointwise:
        for k, x in probe("swap", lambda: swap_probe(judge, ps, chosen, rejected)).items():
            if k in ("position_consistency", "same_slot_rate", "max_swap_mismatch"):
                out[f"judge/probe_swap_{k.removeprefix('max_swap_')}"] = value(x)
    return out
