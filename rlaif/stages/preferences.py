"""Stage 3: preference pairs from the judgments (invalid judgments never enter a pair; they are
counted), and the gold labeller's scores of the candidates where the task has one. Cheap: not
cached, recomputed on every run.

With ``preferences.source=data`` the pairs are the dataset's own labelled pairs of the training
prompts (``data.format`` hh_rlhf, tldr, ultrafeedback: rlaif/data/formats.py), as Zephyr's dDPO
trains on UltraFeedback's; nothing was sampled or judged. The k-th pair of a prompt has
``chosen_index`` 2k and ``rejected_index`` 2k+1, its scores are the dataset's (ultrafeedback) or
1 / 0, and ``judge`` is ``data:<format>``."""

from __future__ import annotations

from rlaif.io import write_records
from rlaif.preferences import build_pairs
from rlaif.stages.base import Inputs, Stage
from rlaif.types import PreferencePair, Prompt


class Preferences(Stage):
    name = "preferences"
    INPUTS = Inputs(config=("preferences", "data.gold", "evaluation.table_rows"),
                    not_output=("evaluation.table_rows",),
                    records=("train_prompts", "candidates", "judgments", "verdicts"))
    outputs = {"preferences": PreferencePair, "gold": dict}
    cached = False

    def inputs(self, cfg):
        if cfg.preferences.get("source", "judge") == "data":
            return Inputs(config=("preferences", "data.format", "data.criterion"),
                          records=("train_prompts", "data_pairs"))
        return self.INPUTS

    def compute(self, v, work):
        if v.cfg.preferences.source == "data":
            pairs, self.stats = data_pairs(v.record("train_prompts"), v.record("data_pairs"), v.cfg.data.format,
                                           v.cfg.data.criterion)
            write_records(v.out / "preferences.jsonl", pairs)
            return {"preferences": pairs, "gold": []}
        prompts, candidates = v.record("train_prompts"), v.record("candidates")
        pairs, self.stats = build_pairs(prompts, candidates, v.record("judgments"), v.record("verdicts"),
                                        v.cfg.preferences.mode, v.cfg.preferences.min_margin)
        write_records(v.out / "preferences.jsonl", pairs)
        gold = v.component("gold")
        by_prompt = {p.id: p for p in prompts}
        scores = gold.score([by_prompt[c.prompt_id] for c in candidates], [c.text for c in candidates]) if gold else []
        rows = [{"prompt_id": c.prompt_id, "index": c.index, "gold": s} for c, s in zip(candidates, scores, strict=True)]
        return {"preferences": pairs, "gold": rows}

    def report(self, v, result):
        metrics = {f"preferences/{k}": x for k, x in self.stats.items()}
        if v.cfg.preferences.source == "data" or v.component("gold") is None:
            return metrics
        g = gold_by_candidate(result["gold"])
        pairs = result["preferences"]
        agree = [g[(p.prompt_id, p.chosen_index)] > g[(p.prompt_id, p.rejected_index)] for p in pairs
                 if g[(p.prompt_id, p.chosen_index)] != g[(p.prompt_id, p.rejected_index)]]
        metrics["judge/pair_agreement_with_gold"] = sum(agree) / len(agree) if agree else float("nan")
        metrics["generate/gold_mean"] = sum(g.values()) / len(g) if g else float("nan")
        by_prompt = {p.id: p for p in v.record("train_prompts")}
        jscore = {(j.prompt_id, j.index): j.score for j in v.record("judgments")}
        rows = [[by_prompt[c.prompt_id].text, c.text, jscore.get((c.prompt_id, c.index)), g[(c.prompt_id, c.index)]]
                for c in v.record("candidates")[: int(v.cfg.evaluation.table_rows)]]
        v.tracker.table("generate/samples", ["prompt", "response", "judge_score", "gold"], rows)
        return metrics


def gold_by_candidate(rows: list[dict]) -> dict[tuple[str, int], float]:
    return {(r["prompt_id"], r["index"]): r["gold"] for r in rows}


def data_pairs(prompts: list[Prompt], rows: list[dict], fmt: str, criterion: str | None
               ) -> tuple[list[PreferencePair], dict[str, float]]:
    """The dataset's labelled pairs (rows of rlaif.data.formats) of ``prompts`` as training pairs."""
    by_prompt = {p.id: p for p in prompts}
    pairs: list[PreferencePair] = []
    per_prompt: dict[str, int] = {}
    for r in rows:
        p = by_prompt.get(r["prompt_id"])
        if p is None:  # a held-out prompt's pair
            continue
        k = per_prompt[p.id] = per_prompt.get(p.id, -1) + 1
        hi, lo = float(r["chosen_score"]), float(r["rejected_score"])
        pairs.append(PreferencePair(
            prompt=p.messages, chosen=[{"role": "assistant", "content": r["chosen"]}],
            rejected=[{"role": "assistant", "content": r["rejected"]}], prompt_id=p.id, chosen_index=2 * k,
            rejected_index=2 * k + 1, chosen_score=hi, rejected_score=lo, margin=hi - lo, judge=f"data:{fmt}",
            criterion=criterion or "dataset label"))
    stats = {"pairs": len(pairs), "from_data": len(pairs), "prompts_with_pairs": len(per_prompt),
             "prompts_without_pairs": len(prompts) - len(per_prompt),
             "mean_margin": sum(p.margin for p in pairs) / len(pairs) if pairs else 0.0}
    return pairs, stats
