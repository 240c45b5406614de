"""experiment=paper/rlaif_labeler and paper/alpacafarm_pool: their checks on synthetic metrics
(cases that must pass and cases that must fail), the labeler audit and the pairwise prompt
variants on the tiny model, bad analysis options, and the configs composing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from rlaif.comparison.runs import RunRecord
from rlaif.config import ConfigError, validate
from rlaif.criteria import load_criterion
from rlaif.judges import PairwiseJudge
from rlaif.models import ModelPool
from rlaif.reproductions.checks import CHECKS, StudyData, run_check
from rlaif.reproductions.checks.rlaif_labeler import mcnemar_p, wilson
from rlaif.reproductions.rlaif_labeler import check_options, counts, labeler_audit, select_pairs
from rlaif.reproductions.study import check_analysis, member_configs
from rlaif.types import Prompt

# ---------------------------------------------------------------------------------------------
# rlaif_labeler check on synthetic counts


def _variant(n=40, aligned=22, averaged=(11, 9, 9, 11), single=(20, 20, 0, 0), ties=0, inv=(4, 4, 1e-7)):
    """Counts as the analysis returns them; ``single`` defaults to a labeler that always picks slot 1."""
    keys = ("lf_gf", "lf_gs", "ls_gf", "ls_gs")
    return {"n": n, "invalid": 0, "aligned": aligned, "ties": ties, "averaged": dict(zip(keys, averaged, strict=True)),
            "single_order": dict(zip(keys, single, strict=True)), "single_order_first": 2 * n // 2 + n // 2,
            "single_order_total": 2 * n, "same_slot_rate": 1.0, "position_consistency": 0.0,
            "invariance": {"n": inv[0], "agree": inv[1], "max_mismatch": inv[2]}}


def _pointwise(n=40, aligned=18):
    return {"n": n, "invalid": 0, "aligned": aligned, "ties": 0, "averaged": {}, "invariance": {}}


def _run(name, **summary):
    return RunRecord(path=Path("/nonexistent") / name, name=name, config={"optimizer.name": "rloo"}, summary=summary)


def _labeler_study(**variants):
    variants = variants or {"base": _variant(), "detailed": _variant(), "pointwise": _pointwise()}
    runs = {"direct": _run("direct", **{"eval/heldout_win_rate": 0.56, "eval/win_rate": 0.7, "eval/kl": 0.2}),
            "distilled": _run("distilled", **{"eval/heldout_win_rate": 0.52, "eval/win_rate": 0.6})}
    return StudyData(runs=runs, analysis={"variants": variants})


PARAMS = {"alpha": 0.05, "ci_level": 0.95, "min_pairs": 20, "min_decisive_share": 0.9, "max_swap_mismatch": 1e-3}


def _crit(result, name):
    return next(c for c in result.criteria if c.name == name)


def test_labeler_check_passes_when_averaging_removes_a_real_slot_preference():
    res = run_check("rlaif_labeler", _labeler_study(), PARAMS)
    assert res.passed, res.lines()
    assert {c.name for c in res.criteria} == {"averaged_labels_slot_free", "single_order_slot_preference",
                                               "averaged_labels_decisive", "order_invariance", "alignment_with_ci"}
    lo, hi = wilson(22, 40)
    assert res.values["alignment"]["base"] == f"0.550 [{lo:.3f}, {hi:.3f}]"
    assert res.values["rlaif_vs_sft"]["direct"]["gold_win_rate_vs_sft"] == 0.56
    assert res.values["direct_minus_distilled_gold_win_rate"] == pytest.approx(0.04)


@pytest.mark.parametrize("change, failing", [
    # the averaged label still prefers slot 1: it disagrees with the human label in one direction only
    (lambda v: v["base"].update(averaged={"lf_gf": 20, "lf_gs": 14, "ls_gf": 0, "ls_gs": 6}), "averaged_labels_slot_free"),
    # the labeler shows no slot preference in one order: nothing for the averaging to remove
    (lambda v: [x.update(single_order={"lf_gf": 10, "lf_gs": 10, "ls_gf": 10, "ls_gs": 10})
                for x in v.values() if "single_order" in x], "single_order_slot_preference"),
    # a "swap" that shows the same order twice: every averaged probability is 1/2
    (lambda v: v["detailed"].update(ties=40, averaged={"lf_gf": 0, "lf_gs": 0, "ls_gf": 0, "ls_gs": 0}),
     "averaged_labels_decisive"),
    (lambda v: v["base"].update(invariance={"n": 4, "agree": 3, "max_mismatch": 0.2}), "order_invariance"),
    (lambda v: v["base"].update(invariance={}), "order_invariance"),
    (lambda v: v["pointwise"].update(n=12, aligned=6), "alignment_with_ci"),
])
def test_labeler_check_fails(change, failing):
    variants = {"base": _variant(), "detailed": _variant(), "pointwise": _pointwise()}
    change(variants)
    res = run_check("rlaif_labeler", _labeler_study(**variants), PARAMS)
    assert not res.passed
    assert not _crit(res, failing).passed
    assert [c.name for c in res.criteria if not c.passed] == [failing]


def test_labeler_check_without_the_audit_fails_saying_why():
    res = run_check("rlaif_labeler", StudyData(runs={}, analysis={}), PARAMS)
    assert not res.passed and res.criteria
    assert all(not c.passed and c.why for c in res.criteria)


def test_labeler_check_rlaif_beats_sft_when_required():
    params = {**PARAMS, "require_rlaif_beats_sft": True}
    assert run_check("rlaif_labeler", _labeler_study(), params).passed
    study = _labeler_study()
    study.runs["distilled"].summary["eval/heldout_win_rate"] = 0.45
    res = run_check("rlaif_labeler", study, params)
    assert not res.passed and not _crit(res, "rlaif_beats_sft").passed
    del study.runs["direct"]
    assert "direct" in _crit(run_check("rlaif_labeler", study, params), "rlaif_beats_sft").why


def test_mcnemar_and_wilson_against_hand_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)  # two-sided exact: 2 * 0.5**5
    assert mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_counts_of_a_first_slot_labeler():
    # always slot 1: P(a | a first) = 0.9, P(a | a second) = 0.1; the averaged label is 1/2 + content
    gold = [1.0, 0.0, 1.0, 0.0]
    orders = [(0.9, 0.12), (0.9, 0.08), (0.88, 0.1), (0.9, 0.1)]
    prefs = [0.5 * (f + s) for f, s in orders]
    c = counts(orders, prefs, gold)
    assert c["single_order"] == {"lf_gf": 2, "lf_gs": 2, "ls_gf": 0, "ls_gs": 0}
    assert c["single_order_first"] == 8 and c["single_order_total"] == 8
    assert c["same_slot_rate"] == 1.0
    assert c["ties"] == 1  # (0.9 + 0.1) / 2
    assert c["aligned"] == 2  # 0.51 -> a (gold a), 0.49 -> b (gold b); 0.49 -> b with gold a is not
    assert c["averaged"] == {"lf_gf": 1, "lf_gs": 0, "ls_gf": 1, "ls_gs": 1}


# ---------------------------------------------------------------------------------------------
# Bad input: analysis options


@pytest.mark.parametrize("options, key", [
    ({"variants": {}}, "variants"),
    ({"variants": {"x": {"judge": "nope"}}}, "variants.x.judge"),
    ({"variants": {"x": {"judge": "pairwise", "opts": {}}}}, "variants.x"),
    ({"variants": {"x": {"judge": "pairwise", "max_pairs": 0}}}, "variants.x.max_pairs"),
    ({"variants": {"x": {"judge": "pairwise"}}, "few_shot_examples": -1}, "few_shot_examples"),
    ({"variants": {"x": {"judge": "pairwise"}}, "pair": "x"}, "unknown key"),
])
def test_bad_analysis_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_options(options)


def test_bad_analysis_options_fail_before_any_member_runs():
    cfg = compose_config(["experiment=paper/rlaif_labeler_cpu", "study.analysis_options.variants.base.judge=nope"])
    with pytest.raises(ConfigError, match="variants.base.judge"):
        check_analysis(cfg)
    cfg = compose_config(["experiment=paper/rlaif_labeler_cpu", "study.analysis=rlaif.reproductions.rlaif_labeler:nope"])
    with pytest.raises(ConfigError, match="no function 'nope'"):
        check_analysis(cfg)


def test_few_shot_examples_are_never_scored():
    rows = [{"id": str(i), "prompt": f"p{i}", "chosen": "c", "rejected": "r", "criterion": "x" if i < 5 else "y"}
            for i in range(9)]
    scored, examples = select_pairs(rows, None, None, 2)
    assert [r["id"] for r in scored] == ["2", "3", "4", "7", "8"]
    assert [e["prompt"] for e in examples["x"]] == ["p0", "p1"]
    with pytest.raises(ConfigError, match="no labelled pairs for"):
        select_pairs(rows, ["z"], None, 0)


# ---------------------------------------------------------------------------------------------
# Real components on the tiny model


def _prompts(n):
    return [Prompt(str(i), f"opening {i}", [{"role": "user", "content": f"Continue this movie review: opening {i}"}],
                   "audit") for i in range(n)]


def test_pairwise_prompt_variants(sharp_model):
    pool = ModelPool()
    crit = load_criterion("concise")  # has few-shot examples
    p = _prompts(1)[0]
    base = PairwiseJudge(crit, pool, model=sharp_model, dtype="float32", few_shot=False)
    shots = PairwiseJudge(crit, pool, model=sharp_model, dtype="float32")
    detailed = PairwiseJudge(crit, pool, model=sharp_model, dtype="float32", few_shot=False, detailed=True)
    text = {j: x.render(p, "one", "two")[0]["content"] for j, x in
            {"base": base, "shots": shots, "detailed": detailed}.items()}
    assert "Examples of a better" not in text["base"] and "Examples of a better" in text["shots"]
    assert crit.description in text["detailed"] and crit.description not in text["base"]
    cot = PairwiseJudge(crit, pool, model=sharp_model, dtype="float32", few_shot=False, chain_of_thought=True,
                        cot_max_new_tokens=4)
    assert "explain" in cot.render(p, "one", "two")[0]["content"]
    res = cot.compare(_prompts(2), ["short", "a long answer"], ["a long answer", "short"])
    assert all(f is not None and s is not None for f, s in res)
    assert all("rationale_first" in d and "rationale_second" in d for d in cot.last_details)
    # the rationale changes what the answer is read after: P differs from the one-step judge's
    plain = PairwiseJudge(crit, pool, model=sharp_model, dtype="float32", few_shot=False)
    assert plain.compare(_prompts(2), ["short", "a long answer"], ["a long answer", "short"]) != res


def test_labeler_audit_on_the_tiny_model(sharp_model, tmp_path):
    cfg = compose_config(["experiment=paper/rlaif_labeler_cpu", f"policy.model={sharp_model}",
                          f"cache.dir={tmp_path / 'cache'}", "judge.dtype=float32"])
    options = OmegaConf.to_container(cfg.study.analysis_options, resolve=True)
    options.update(limit_per_criterion=6, invariance_pairs=3)
    options["variants"] = {"base": {"judge": "pairwise", "options": {"few_shot": False, "dtype": "float32"}},
                           "few_shot": {"judge": "pairwise", "options": {"dtype": "float32"}, "few_shot": True},
                           "cot": {"judge": "pairwise", "options": {"chain_of_thought": True, "cot_max_new_tokens": 3,
                                                                    "dtype": "float32"}, "max_pairs": 4},
                           "pointwise": {"judge": "pointwise", "options": {"dtype": "float32"}}}
    out = labeler_audit(cfg, StudyData(runs={}), tmp_path, copy.deepcopy(options))
    v = out["variants"]
    assert out["n_pairs"] == 6 and v["base"]["n"] == 6 and v["cot"]["n"] == 4 and v["pointwise"]["n"] == 6
    for name in ("base", "few_shot", "cot"):
        assert v[name]["single_order_total"] == 2 * v[name]["n"]
        assert sum(v[name]["averaged"].values()) + v[name]["ties"] == v[name]["n"]
        inv = v[name]["invariance"]
        assert inv["n"] == min(3, v[name]["n"]) and inv["agree"] == inv["n"] and inv["max_mismatch"] < 1e-4
    assert "single_order" not in v["pointwise"] and v["pointwise"]["invariance"] == {}
    assert 0 <= out["base/alignment"] <= 1
    res = CHECKS["rlaif_labeler"](StudyData(runs={}, analysis=out), {"min_pairs": 4})
    assert _crit(res, "order_invariance").passed and _crit(res, "alignment_with_ci").passed


# ---------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("experiment", ["paper/rlaif_labeler_cpu", "paper/rlaif_labeler"])
def test_labeler_configs_compose_and_validate(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    validate(cfg)
    check_analysis(cfg)
    members = member_configs(cfg, [f"experiment={experiment}"])
    kinds = {n: (m.judge.kind, m.optimizer.reward_source) for n, (_, m) in members.items()}
    assert kinds == {"distilled": ("pairwise", "reward_model"), "direct": ("pointwise", "judge")}
    assert cfg.reproduction.check == "rlaif_labeler" and cfg.reproduction.name == "rlaif_labeler"


# ---------------------------------------------------------------------------------------------
# alpacafarm_pool: the check on synthetic metrics, the pool's label flips on the tiny model


def _method(name, pool, gold, flip=0.25):
    return RunRecord(path=Path("/nonexistent") / name, name=name, config={"judge.flip_rate": flip},
                     summary={"eval/win_rate": pool, "eval/heldout_win_rate": gold})


AF = {"methods": ["best_of_n", "dpo", "ppo"], "min_spearman": 0.98, "flip_rate": 0.25}


def _af(pool, gold, flips=(0.25, 0.25, 0.25)):
    names = AF["methods"]
    return StudyData(runs={n: _method(n, p, g, f) for n, p, g, f in zip(names, pool, gold, flips, strict=True)})


def test_alpacafarm_check_passes_on_the_same_ranking():
    res = run_check("alpacafarm_pool", _af([0.6, 0.55, 0.7], [0.52, 0.51, 0.58]), AF)
    assert res.passed, res.lines()
    assert res.values["pool_ranking"] == res.values["gold_ranking"] == ["ppo", "best_of_n", "dpo"]
    assert _crit(res, "ranking_spearman").measured == 1.0


@pytest.mark.parametrize("study, failing", [
    (_af([0.6, 0.55, 0.7], [0.51, 0.52, 0.58]), "ranking_spearman"),  # one adjacent swap: rho 0.5
    (_af([0.6, 0.55, 0.7], [0.58, 0.52, 0.51]), "ranking_spearman"),  # reversed
    (_af([0.6, 0.6, 0.6], [0.5, 0.52, 0.58]), "ranking_spearman"),  # the pool cannot rank them
    (_af([0.6, 0.55, 0.7], [0.52, 0.51, 0.58], flips=(0.25, 0.0, 0.25)), "pool_is_noisy"),
])
def test_alpacafarm_check_fails(study, failing):
    res = run_check("alpacafarm_pool", study, AF)
    assert not res.passed and not _crit(res, failing).passed
    assert [c.name for c in res.criteria if not c.passed] == [failing]


def test_alpacafarm_check_with_a_missing_method_fails_saying_which():
    study = _af([0.6, 0.55, 0.7], [0.52, 0.51, 0.58])
    del study.runs["ppo"]
    res = run_check("alpacafarm_pool", study, AF)
    assert not res.passed
    assert "ppo" in _crit(res, "methods_measured").why and not _crit(res, "ranking_spearman").passed


def test_panel_flip_rate_flips_a_seeded_share_of_labels(sharp_model):
    from rlaif.judges import PanelJudge
    from rlaif.judges.base import rank_by_pairs
    from rlaif.types import Candidate

    crit = load_criterion("positive_sentiment")
    pool = ModelPool()
    members = [{"_target_": "rlaif.judges.PairwiseJudge"}]
    clean = PanelJudge(crit, members, "mean", pool=pool, model=sharp_model, dtype="float32")
    noisy = PanelJudge(crit, members, "mean", pool=pool, model=sharp_model, dtype="float32", flip_rate=0.25, flip_seed=1)
    n = 40
    prompts, a, b = _prompts(n), [f"good {i}" for i in range(n)], [f"bad film {i}" for i in range(n)]
    c, d = clean.compare(prompts, a, b), noisy.compare(prompts, a, b)
    flipped = list(noisy.last_flipped)
    assert 0.1 < sum(flipped) / n < 0.4  # about a quarter
    for (f0, s0), (f1, s1), flip in zip(c, d, flipped, strict=True):
        assert (f1, s1) == ((pytest.approx(1 - f0), pytest.approx(1 - s0)) if flip else (f0, s0))
    noisy.compare(prompts, b, a)  # the other presentation flips the same comparisons
    assert noisy.last_flipped == flipped
    assert "flip=0.25" in noisy.name and not clean.last_flipped[0]
    cands = [Candidate("0", i, t, 3, True, "m") for i, t in enumerate(["good", "bad", "fine", "dull"])]
    _, verdicts = rank_by_pairs(noisy, prompts[:1], cands)
    assert [v.details.get("flipped", False) for v in verdicts] == noisy.last_flipped


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["paper/rlaif_labeler_cpu", "paper/alpacafarm_pool_cpu"])
def test_cpu_study_runs_end_to_end_on_the_tiny_model(experiment, tiny_model, tmp_path):
    from rlaif.reproductions.study import run_study

    overrides = [f"experiment={experiment}", f"policy.model={tiny_model}", f"cache.dir={tmp_path / 'cache'}",
                 "data.num_train=6", "data.num_eval=3", "generator.dtype=float32", "judge.dtype=float32",
                 "evaluation.samples_per_prompt=2", "tracker=none"]
    if experiment == "paper/rlaif_labeler_cpu":
        overrides += ["study.analysis_options.limit_per_criterion=4", "study.analysis_options.variants.cot.max_pairs=2",
                      "optimizer.batch_size=4"]
    cfg = compose_config(overrides)
    summary = run_study(cfg, tmp_path / "study", overrides)
    assert summary["study/failed"] == []
    assert isinstance(summary["reproduction/passed"], bool)
    assert (tmp_path / "study" / "reproduction.md").is_file()
