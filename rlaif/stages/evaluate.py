"""Stage 6: the trained policy against the reference policy on held-out prompts, judged by the same
frozen judge (and a held-out judge, when configured), with gold reward and KL. The reference's
samples are their own stage: they depend only on the starting policy, so every optimizer's run
of the same experiment reuses them."""

from __future__ import annotations

import math
from typing import Any

from hydra.utils import instantiate

from rlaif.answers import answers_journaled
from rlaif.criteria import Criterion
from rlaif.evaluation import KL_ESTIMATOR, KLModels, Scorers, evaluate
from rlaif.generators import HFGenerator, VLLMGenerator
from rlaif.generators.hf import SampleTag
from rlaif.stages.base import Stage
from rlaif.stages.judge import JUDGE
from rlaif.stages.reward_model import POLICY
from rlaif.types import Candidate, EvalSample

SAMPLING = tuple(f"evaluation.{k}" for k in ("temperature", "top_p", "max_new_tokens", "batch_size", "dtype",
                                             "samples_per_prompt", "engine"))


def _sampler(ev, model: str) -> HFGenerator | VLLMGenerator:
    """Samples both policies, on ``evaluation.engine``: the trained policy is a local model whatever
    generated the candidates."""
    cls = VLLMGenerator if ev.get("engine") == "vllm" else HFGenerator
    return cls(model=model, temperature=ev.temperature, top_p=ev.top_p, max_new_tokens=ev.max_new_tokens,
               batch_size=ev.batch_size, dtype=ev.dtype)


def _finite_or_none(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


class EvaluateReference(Stage):
    name = "evaluate_reference"
    INPUTS = POLICY.plus(config=(*SAMPLING, "seed"), records=("eval_prompts",))
    outputs = {"eval_reference": Candidate}

    def compute(self, v, work):
        name = v.cfg.policy.model
        gen = _sampler(v.cfg.evaluation, name)
        return {"eval_reference": gen.sample_model(
            v.pool, name, v.record("eval_prompts"), int(v.cfg.evaluation.samples_per_prompt), int(v.cfg.seed) + 1,
            SampleTag(v.model("policy"), "reference", "evaluate: reference"), journal=work.journal("eval_reference"))}


class Evaluate(Stage):
    name = "evaluate"
    outputs = {"eval_samples": EvalSample, "eval_metrics": dict}
    code = {"kl_estimator": KL_ESTIMATOR}

    def __init__(self, optimizer, reward=None):
        self.optimizer, self.reward = optimizer, reward  # best-of-n selects with the training reward

    def inputs(self, cfg):
        inputs = POLICY.merge(JUDGE).plus(config=("evaluation", "data.gold", "seed", "optimizer"),
                                          not_output=("evaluation.table_rows", "optimizer.save_steps"),
                                          records=("eval_prompts", "eval_reference"), models=("trained",))
        if self.optimizer.needs_reward and cfg.optimizer.get("reward_source", "judge") == "reward_model":
            inputs = inputs.plus(models=("reward_model",))
        return inputs

    def compute(self, v, work):  # sampling and API judges' answers are journaled; the rest is redone
        ev = v.cfg.evaluation
        heldout = None
        if ev.get("heldout_judge"):
            criterion = Criterion.from_config(ev.heldout_criteria) if ev.get("heldout_criteria") else None
            heldout = instantiate(ev.heldout_judge, _partial_=True)(
                criterion=criterion or v.component("criterion"), pool=v.pool)
        judges = [(v.component("judge"), "judge.api.max_failed_share"), (self.reward, "judge.api.max_failed_share"),
                  (heldout, "evaluation.heldout_judge.api.max_failed_share")]
        with answers_journaled(judges, work.scratch / "judge_answers.jsonl"):  # raises before it is cached
            return self._evaluate(v, work, heldout)

    def _evaluate(self, v, work, heldout):
        from rlaif.optimizers.best_of_n import best_of_n_kl

        ev, pool, name = v.cfg.evaluation, v.pool, v.cfg.policy.model
        gen, tok, prompts = _sampler(ev, name), pool.tokenizer(name), v.record("eval_prompts")
        k, seed, policy_id = int(ev.samples_per_prompt), int(v.cfg.seed) + 1, v.model("policy")
        extra: dict[str, Any] = {}
        if self.optimizer.name == "best_of_n":  # n fresh reference samples per slot, the judge keeps its favourite
            n = self.optimizer.n
            pools = gen.sample_model(pool, name, prompts, k * n, seed + 7919,
                                     SampleTag(policy_id, "best_of_n", f"evaluate: best-of-{n}"),
                                     journal=work.journal("best_of_n"))
            if getattr(self.reward, "references", None):  # a comparative judge: compare with a fresh reference sample
                refs = gen.sample_model(pool, name, prompts, 1, seed + 104729,
                                        SampleTag(policy_id, "reference", "evaluate: baseline"),
                                        journal=work.journal("baseline"))
                self.reward.references.update({c.prompt_id: c.text for c in refs})
            pol, extra = self.optimizer.select(prompts, pools, self.reward, k)
            pol_model, kl = None, best_of_n_kl(n)
        else:
            trained = v.model("trained")
            pool.add("trained-policy", str(v.path("trained")), trained)
            pol = gen.sample_model(pool, "trained-policy", prompts, k, seed,
                                   SampleTag(trained, "policy", "evaluate: policy"), journal=work.journal("policy"))
            pol_model, kl = pool.model("trained-policy", ev.kl_dtype), None
        samples, m = evaluate(prompts, pol, v.record("eval_reference"),
                              Scorers(v.component("judge"), v.component("gold"), heldout),
                              KLModels(pol_model, pool.model(name, ev.kl_dtype), tok, int(ev.kl_batch_size), kl))
        m.update(extra)
        return {"eval_samples": samples, "eval_metrics": [{k: _finite_or_none(x) for k, x in m.items()}]}

    def report(self, v, result):
        metrics = {k: (float("nan") if x is None else x) for k, x in result["eval_metrics"][0].items()}
        samples = result["eval_samples"]
        pol = {(s.prompt_id, s.index): s for s in samples if s.source == "policy"}
        text = {p.id: p.text for p in v.record("eval_prompts")}
        rows = [[text[s.prompt_id], pol[(s.prompt_id, s.index)].text, s.text, pol[(s.prompt_id, s.index)].gold,
                 s.gold] for s in samples if s.source == "reference" and (s.prompt_id, s.index) in pol]
        v.tracker.table("eval/samples", ["prompt", "policy", "reference", "gold_policy", "gold_reference"],
                        rows[: int(v.cfg.evaluation.table_rows)])
        return metrics
