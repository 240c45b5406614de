"""Stage 3: preference pairs from the judgments (invalid judgments never enter a pair; they are
counted), and the gold labeller's scores of the candidates where the task has one. Cheap: not
cached, recomputed on every run."""

from __future__ import annotations

from rlaif.io import write_records
from rlaif.preferences import build_pairs
from rlaif.stages.base import Inputs, Stage
from rlaif.types import PreferencePair


class Preferences(Stage):
    name = "preferences"
    INPUTS = Inputs(config=("preferences", "data.gold", "evaluation.table_rows"),
                    not_output=("evaluation.table_rows",),
                    records=("train_prompts", "candidates", "judgments", "verdicts"))
    outputs = {"preferences": PreferencePair, "gold": dict}
    cached = False

    def compute(self, v, work):
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
        if v.component("gold") is None:
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
