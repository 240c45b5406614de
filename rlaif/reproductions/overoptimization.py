"""Reward-model over-optimisation (Gao et al. 2022, arXiv:2210.10760): best-of-n over n and RL
against a *proxy* reward model, both scored by a *gold* labeller the proxy was only trained to imitate.

The study's RL members (PPO with ``optimizer.reward_source=reward_model``) train the proxy (the
pipeline's reward-model stage, linked into each run folder as ``reward_model``) and optimise
against it. This analysis (``study.analysis: rlaif.reproductions.overoptimization:analysis``) then

- samples ``samples_per_prompt`` (N) responses per held-out prompt ONCE from the reference policy,
  scores each with the proxy and the gold, and computes for every n in ``ns`` the expected
  best-of-n proxy and gold scores with the unbiased estimator over the N samples (sorted by
  proxy, sample i is the maximum of a uniformly random n-subset with probability
  C(i-1, n-1) / C(N, n)), against KL_bon(n) = log n - (n-1)/n;
- scores every RL member's held-out samples (policy and reference) with the same proxy, beside
  their gold rewards and measured KL (``eval/kl``);
- fits the paper's functional forms to the gold gains over d = sqrt(KL): R_bon(d) = d(alpha -
  beta d) and R_RL(d) = d(alpha - beta log d) (least squares; alpha, beta, R^2 and the fitted peak);
- draws gold and proxy against d for both into ``overoptimization.png`` and writes every scored
  best-of-n sample to ``bon_samples.jsonl``.

The pure helpers (``kl_bon``, ``best_of_n_expectation``, ``fit_form``) are used
by the check too (rlaif/reproductions/checks/overoptimization.py); torch and matplotlib load only
inside ``analysis``. The analysis never trains anything.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# ---------------------------------------------------------------------------------------------
# Options


class AnalysisOptions(BaseModel):
    """``study.analysis_options`` of the overoptimization analysis."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    samples_per_prompt: Annotated[int, Field(ge=2)] = 64  # N reference samples per prompt, drawn once
    ns: list[Annotated[int, Field(ge=1)]] = [1, 2, 4, 8, 16, 32, 64]  # best-of-n sizes, each <= N; must include 1
    num_prompts: Annotated[int, Field(ge=1)] | None = None  # held-out prompts used (the first ones); null: all
    rl_prefix: str = "ppo"  # study members whose names start with it are the RL points
    seed_offset: Annotated[int, Field(ge=0)] = 7  # best-of-n samples use seed + this (evaluation uses seed + 1)

    @field_validator("ns")
    @classmethod
    def _sorted(cls, v):
        if not v or 1 not in v:
            raise ValueError("must include 1 (the reference policy, KL 0), e.g. [1, 2, 4, 8, 16, 32, 64]")
        if sorted(set(v)) != list(v):
            raise ValueError(f"{v}: list each n once, in increasing order")
        return v

    @model_validator(mode="after")
    def _within(self):
        if self.ns[-1] > self.samples_per_prompt:
            raise ValueError(f"ns goes up to {self.ns[-1]} but samples_per_prompt is {self.samples_per_prompt}: the "
                             "estimator needs at least n samples per prompt; raise samples_per_prompt or drop the large n")
        return self


def validate_options(options: dict[str, Any] | None) -> AnalysisOptions:
    """The analysis's options, checked; a ValueError names each bad key and says what fits."""
    from pydantic import ValidationError

    try:
        return AnalysisOptions.model_validate(dict(options or {}))
    except ValidationError as e:
        problems = [f"study.analysis_options.{'.'.join(str(x) for x in err['loc']) or '(all)'}: {err['msg']}"
                    for err in e.errors()]
        raise ValueError("; ".join(problems)) from None


# ---------------------------------------------------------------------------------------------
# Best-of-n


def kl_bon(n: int) -> float:
    """KL(best-of-n || reference) in nats, the analytic value (an upper bound; Gao et al. 2022)."""
    return math.log(n) - (n - 1) / n


def bon_weights(m: int, n: int) -> list[float]:
    """P(the i-th smallest of m samples, 0-based, is the largest of a uniformly random n-subset)
    = C(i, n-1) / C(m, n); zero for i < n-1. Sums to 1."""
    if not 1 <= n <= m:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {m} samples")
    total = math.comb(m, n)
    return [math.comb(i, n - 1) / total for i in range(m)]


def best_of_n_expectation(proxy: Sequence[float], gold: Sequence[float], n: int) -> tuple[float, float]:
    """(E[proxy], E[gold]) of the sample best-of-n keeps (the proxy's favourite of n drawn without
    replacement from these samples), exactly: the unbiased estimator over all n-subsets. Tied proxy
    scores share their mean gold (the expectation of a random tie-break)."""
    if len(proxy) != len(gold):
        raise ValueError(f"{len(proxy)} proxy scores but {len(gold)} gold scores")
    order = sorted(range(len(proxy)), key=lambda i: proxy[i])
    p = [float(proxy[i]) for i in order]
    g = [float(gold[i]) for i in order]
    i = 0
    while i < len(p):  # ties: mean gold of the tied group
        j = i
        while j + 1 < len(p) and p[j + 1] == p[i]:
            j += 1
        if j > i:
            mean = statistics.fmean(g[i:j + 1])
            g[i:j + 1] = [mean] * (j + 1 - i)
        i = j + 1
    w = bon_weights(len(p), n)
    return sum(a * b for a, b in zip(w, p, strict=True)), sum(a * b for a, b in zip(w, g, strict=True))


# ---------------------------------------------------------------------------------------------
# The paper's functional forms


FORMS = {"bon": "R(d) = d (alpha - beta d)", "rl": "R(d) = d (alpha - beta log d)"}


def fit_form(d: Sequence[float], y: Sequence[float], form: str) -> dict[str, float | None]:
    """Least-squares (alpha, beta) of ``FORMS[form]`` to gains ``y`` (score minus the score at d = 0)
    at distances ``d`` = sqrt(KL); points at d = 0 are left out (every form passes through the
    origin). ``r2``: 1 - SS_res / SS_tot over the points fitted (None with fewer than 3 points, where
    two parameters fit exactly, or when y is constant); ``peak_d``: where the fitted curve is
    highest (inf when it never turns down)."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}: one of {', '.join(FORMS)}")
    pts = [(float(a), float(b)) for a, b in zip(d, y, strict=True) if a > 0 and math.isfinite(a) and math.isfinite(b)]
    out: dict[str, float | None] = {"alpha": None, "beta": None, "r2": None, "peak_d": None, "points": len(pts)}
    if len(pts) < 2:
        return out
    f2 = (lambda x: x * x) if form == "bon" else (lambda x: x * math.log(x))
    # y = alpha * x - beta * f2(x): normal equations of the two-column least squares
    s11 = sum(x * x for x, _ in pts)
    s12 = sum(-x * f2(x) for x, _ in pts)
    s22 = sum(f2(x) ** 2 for x, _ in pts)
    t1 = sum(x * v for x, v in pts)
    t2 = sum(-f2(x) * v for x, v in pts)
    det = s11 * s22 - s12 * s12
    if abs(det) <= 1e-12 * max(s11 * s22, 1e-300):
        return out
    alpha = (t1 * s22 - t2 * s12) / det
    beta = (s11 * t2 - s12 * t1) / det
    pred = [alpha * x - beta * f2(x) for x, _ in pts]
    mean = statistics.fmean(v for _, v in pts)
    ss_tot = sum((v - mean) ** 2 for _, v in pts)
    ss_res = sum((v - q) ** 2 for (_, v), q in zip(pts, pred, strict=True))
    out.update(alpha=alpha, beta=beta, peak_d=peak_of(alpha, beta, form),
               r2=(1 - ss_res / ss_tot) if len(pts) >= 3 and ss_tot > 0 else None)
    return out


def peak_of(alpha: float, beta: float, form: str) -> float:
    """The d where the fitted form is highest: bon alpha / (2 beta) (0 when alpha <= 0: it only
    falls); rl exp(alpha / beta - 1); inf when beta <= 0 (the form never turns down)."""
    if beta <= 0:
        return math.inf if alpha > 0 or form == "rl" else 0.0
    if form == "bon":
        return max(alpha / (2 * beta), 0.0)
    z = alpha / beta - 1
    return math.exp(z) if z < 700 else math.inf


def form_value(d: float, alpha: float, beta: float, form: str) -> float:
    if d <= 0:
        return 0.0
    return d * (alpha - beta * (d if form == "bon" else math.log(d)))


# ---------------------------------------------------------------------------------------------
# The analysis


def _sem(xs: Sequence[float]) -> float:
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")


def _num(x: float) -> float | None:
    return round(x, 6) if x is not None and math.isfinite(x) else None


def proxy_path(data, prefix: str) -> Path:
    """The proxy reward model the RL members trained against (their ``reward_model`` link); all
    must share it, or the best-of-n and RL curves would be against different proxies."""
    members = data.matching(prefix)
    if not members:
        have = ", ".join(f"{n}{'' if r.complete else ' (incomplete)'}" for n, r in data.runs.items()) or "none"
        raise ValueError(f"no finished study member named {prefix}* (study.analysis_options.rl_prefix); the proxy "
                         f"reward model comes from them. Members: {have}")
    paths = {}
    for name, r in members:
        link = Path(r.path) / "reward_model"
        if not link.exists():
            raise ValueError(f"{r.path}: no reward_model link: member {name} must train against a reward model "
                             "(optimizer.reward_source=reward_model)")
        paths[name] = link.resolve()
    if len(set(paths.values())) > 1:
        raise ValueError("the RL members trained against different proxy reward models (give them the same "
                         "reward_model, preferences and data settings): "
                         + ", ".join(f"{n}: {p}" for n, p in paths.items()))
    return next(iter(paths.values()))


def analysis(cfg, data, out: Path, options: dict) -> dict[str, Any]:
    """Best-of-n over n and the RL members, proxy and gold against d = sqrt(KL); see the module docstring."""
    from hydra.utils import instantiate

    from rlaif.criteria import Criterion
    from rlaif.generators import HFGenerator
    from rlaif.generators.hf import SampleTag
    from rlaif.io import read_records, write_records
    from rlaif.judges.reward_model import RewardModelJudge
    from rlaif.models import ModelPool
    from rlaif.types import Prompt

    opts = validate_options(options)
    out = Path(out)
    if not cfg.data.get("gold"):
        raise ValueError("data.gold: the overoptimization study needs a gold labeller (e.g. rlaif.judges.VaderJudge)")
    rm_path = proxy_path(data, opts.rl_prefix)
    members = data.matching(opts.rl_prefix)
    prompts = [p for p in read_records(Path(members[0][1].path) / "prompts.jsonl", Prompt) if p.split == "eval"]
    prompts = prompts[: opts.num_prompts] if opts.num_prompts else prompts
    rm = cfg.get("reward_model") or {}
    proxy = RewardModelJudge(Criterion.from_config(cfg.criteria), model=str(rm_path),
                             dtype=rm.get("judge_dtype", "float32"), batch_size=int(rm.get("judge_batch_size", 16)),
                             trust_remote_code=bool(cfg.policy.trust_remote_code))
    gold = instantiate(cfg.data.gold)

    # Best-of-n: N reference samples per prompt, drawn once, under the evaluation's sampling settings.
    ev = cfg.evaluation
    pool = ModelPool(cfg.cache.dir, cfg.policy.prefer_hub, cfg.policy.trust_remote_code, cfg.policy.allow_pickle)
    gen = HFGenerator(model=cfg.policy.model, temperature=ev.temperature, top_p=ev.top_p,
                      max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, dtype=ev.dtype)
    n_max = opts.samples_per_prompt
    print(f"rlaif: overoptimization: {n_max} reference samples for each of {len(prompts)} held-out prompts",
          flush=True)
    samples = gen.sample_model(pool, cfg.policy.model, prompts, n_max, int(cfg.seed) + opts.seed_offset,
                               SampleTag(pool.resolve(cfg.policy.model).identity, "reference", "best-of-n: reference"))
    del pool, gen
    gc.collect()
    by_id = {p.id: p for p in prompts}
    texts = [c.text for c in samples]
    print(f"rlaif: overoptimization: scoring {len(samples)} samples with the proxy and the gold", flush=True)
    proxy_scores = proxy.score([by_id[c.prompt_id] for c in samples], texts)
    gold_scores = gold.score([by_id[c.prompt_id] for c in samples], texts)
    write_records(out / "bon_samples.jsonl", [
        {"prompt_id": c.prompt_id, "index": c.index, "text": c.text, "num_tokens": c.num_tokens, "proxy": p, "gold": g}
        for c, p, g in zip(samples, proxy_scores, gold_scores, strict=True)])
    bon = best_of_n_curves(prompts, samples, proxy_scores, gold_scores, opts.ns)

    # RL: each member's held-out samples, proxy-scored here beside the gold the evaluation gave them.
    rl = rl_points(members, by_id_all={**by_id, **_eval_prompts(members)}, proxy=proxy)
    del proxy
    gc.collect()

    values: dict[str, Any] = {"bon": bon, "rl": rl, "proxy_reward_model": str(rm_path),
                              "bon_prompts": len(prompts), "bon_samples_per_prompt": n_max}
    for name, curve, form in (("bon", bon, "bon"), ("rl", rl, "rl")):
        for score in ("gold", "proxy"):
            fit = fit_form(curve["d"], curve[f"{score}_gain"], form)
            for k in ("alpha", "beta", "r2", "peak_d"):
                values[f"{name}_{score}_{k}"] = _num(fit[k]) if fit[k] is not None else None
    try:
        plot(values, out / "overoptimization.png")
    except Exception as e:  # noqa: BLE001 - a plot that cannot be drawn must not lose the measurements
        values["plot_error"] = f"{type(e).__name__}: {e}"
    return values


def _eval_prompts(members) -> dict:
    from rlaif.io import read_records
    from rlaif.types import Prompt

    out = {}
    for _, r in members:
        out.update({p.id: p for p in read_records(Path(r.path) / "prompts.jsonl", Prompt)})
    return out


def best_of_n_curves(prompts, samples, proxy_scores, gold_scores, ns: Sequence[int]) -> dict[str, list]:
    """Per n: KL_bon, d, the mean over prompts of the expected best-of-n proxy and gold scores,
    their gains over n = 1 and the gain's standard error over prompts."""
    per: dict[str, tuple[list, list]] = {p.id: ([], []) for p in prompts}
    for c, p, g in zip(samples, proxy_scores, gold_scores, strict=True):
        if p is not None and g is not None and math.isfinite(p) and math.isfinite(g):
            per[c.prompt_id][0].append(p)
            per[c.prompt_id][1].append(g)
    usable = {pid: v for pid, v in per.items() if len(v[0]) >= ns[-1]}
    if not usable:
        raise ValueError(f"no prompt kept {ns[-1]} scorable samples (the proxy or gold returned None/NaN)")
    rows = {pid: [best_of_n_expectation(p, g, n) for n in ns] for pid, (p, g) in usable.items()}
    curve: dict[str, list] = {"n": list(ns), "kl": [], "d": [], "proxy": [], "gold": [], "proxy_gain": [],
                              "gold_gain": [], "gold_gain_sem": [], "proxy_gain_sem": []}
    for j, n in enumerate(ns):
        kl = kl_bon(n)
        curve["kl"].append(_num(kl))
        curve["d"].append(_num(math.sqrt(kl)))
        for k, idx in (("proxy", 0), ("gold", 1)):
            vals = [r[j][idx] for r in rows.values()]
            gains = [r[j][idx] - r[0][idx] for r in rows.values()]
            curve[k].append(_num(statistics.fmean(vals)))
            curve[f"{k}_gain"].append(_num(statistics.fmean(gains)))
            curve[f"{k}_gain_sem"].append(_num(_sem(gains)) if j else 0.0)
    curve["prompts"] = len(rows)
    return curve


def rl_points(members, by_id_all: dict, proxy) -> dict[str, list]:
    """Per RL member (sorted by KL): eval/kl, d, mean proxy and gold of its held-out samples, and
    their gains over the reference's samples (paired by prompt; standard error over prompts)."""
    from rlaif.io import read_records
    from rlaif.types import EvalSample

    cache: dict[tuple[str, str], float | None] = {}
    points = []
    for name, r in members:
        kl = r.metric("eval/kl")
        samples = read_records(Path(r.path) / "eval_samples.jsonl", EvalSample)
        todo = [s for s in samples if (s.prompt_id, s.text) not in cache]
        if todo:
            scores = proxy.score([by_id_all[s.prompt_id] for s in todo], [s.text for s in todo])
            cache.update({(s.prompt_id, s.text): x for s, x in zip(todo, scores, strict=True)})
        per: dict[str, dict[str, list]] = {}
        for s in samples:
            x = cache[(s.prompt_id, s.text)]
            d = per.setdefault(s.prompt_id, {"policy_gold": [], "reference_gold": [], "policy_proxy": [],
                                             "reference_proxy": []})
            if s.gold is not None and math.isfinite(s.gold):
                d[f"{s.source}_gold"].append(s.gold)
            if x is not None and math.isfinite(x):
                d[f"{s.source}_proxy"].append(x)
        gains: dict[str, list[float]] = {"gold": [], "proxy": []}
        means: dict[str, list[float]] = {"gold": [], "proxy": []}
        for d in per.values():
            for k in ("gold", "proxy"):
                if d[f"policy_{k}"] and d[f"reference_{k}"]:
                    pm, rm_ = statistics.fmean(d[f"policy_{k}"]), statistics.fmean(d[f"reference_{k}"])
                    gains[k].append(pm - rm_)
                    means[k].append(pm)
        if kl is None or not gains["gold"] or not gains["proxy"]:
            continue
        points.append((max(kl, 0.0), name, statistics.fmean(means["proxy"]), statistics.fmean(means["gold"]),
                       statistics.fmean(gains["proxy"]), statistics.fmean(gains["gold"]), _sem(gains["gold"]),
                       _sem(gains["proxy"]), kl))
    points.sort()
    keys = ("kl_clipped", "members", "proxy", "gold", "proxy_gain", "gold_gain", "gold_gain_sem", "proxy_gain_sem",
            "kl")
    curve = {k: [p[i] for p in points] for i, k in enumerate(keys)}
    curve.pop("kl_clipped")
    curve["d"] = [math.sqrt(p[0]) for p in points]
    return {k: ([_num(x) for x in v] if k != "members" else v) for k, v in curve.items()}


def plot(values: dict, path: Path) -> None:
    """Gold and proxy gains against d = sqrt(KL), best-of-n and RL side by side, with the fitted forms."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    for ax, (name, title, form) in zip(fig.subplots(1, 2), (("bon", "best-of-n (x: sqrt KL_bon)", "bon"),
                                                            ("rl", "RL (PPO) against the proxy", "rl")), strict=True):
        curve = values[name]
        d = ([0.0] + list(curve["d"])) if name == "rl" else list(curve["d"])
        gold = ([0.0] + list(curve["gold_gain"])) if name == "rl" else list(curve["gold_gain"])
        prox = ([0.0] + list(curve["proxy_gain"])) if name == "rl" else list(curve["proxy_gain"])
        twin = ax.twinx()
        ax.plot(d, gold, "o-", color="#d62728", label="gold (measured)")
        twin.plot(d, prox, "s--", color="#1f77b4", label="proxy (measured)")
        top = max(d) if d else 1.0
        xs = [top * i / 100 for i in range(1, 121)]
        for score, axis, colour in (("gold", ax, "#d62728"), ("proxy", twin, "#1f77b4")):
            a, b = values.get(f"{name}_{score}_alpha"), values.get(f"{name}_{score}_beta")
            if a is not None and b is not None:
                r2 = values.get(f"{name}_{score}_r2")
                axis.plot(xs, [form_value(x, a, b, form) for x in xs], ":", color=colour, alpha=0.8,
                          label=f"{score} fit a={a:.3g} b={b:.3g}" + (f" R2={r2:.2f}" if r2 is not None else ""))
        if name == "bon":
            for x, n in zip(curve["d"], curve["n"], strict=True):
                ax.annotate(f"n={n}", (x, 0), textcoords="offset points", xytext=(0, -12), fontsize=7, ha="center")
        else:
            for x, g, m in zip(curve["d"], curve["gold_gain"], curve["members"], strict=True):
                ax.annotate(m, (x, g), textcoords="offset points", xytext=(3, 5), fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("d = sqrt(KL) (nats^0.5)")
        ax.set_ylabel("gold gain over the reference", color="#d62728")
        twin.set_ylabel("proxy gain over the reference", color="#1f77b4")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
        ax.axhline(0, color="grey", linewidth=0.5)
    fig.suptitle("Reward-model over-optimisation: gold vs proxy (Gao et al. 2022)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


analysis.validate_options = validate_options  # checked by the study runner before any member runs

__all__ = ["AnalysisOptions", "FORMS", "analysis", "best_of_n_expectation", "bon_weights", "fit_form", "form_value",
           "kl_bon", "peak_of", "validate_options"]
