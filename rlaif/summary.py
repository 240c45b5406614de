"""The readable summary printed at the end of a run."""

from __future__ import annotations

from pathlib import Path


def format_summary(name: str, s: dict, out: Path, location: str | None, hits: dict[str, bool]) -> str:
    def f(k, fmt="{:.3f}"):
        v = s.get(k)
        return "n/a" if v is None else fmt.format(v)

    stages = [k[5:-2] for k in s if k.startswith("time/") and k != "time/total_s"]
    lines = [
        "",
        f"== rlaif run '{name}' finished in {f('time/total_s', '{:.0f}')} s ==",
        f"  gold reward   reference {f('eval/gold_reward_reference')}  ->  policy {f('eval/gold_reward_policy')}"
        f"   (gain {f('eval/gold_reward_gain', '{:+.3f}')}, n={f('eval/samples_per_policy', '{:.0f}')} per policy)",
        f"  judge win rate of policy over reference: {f('eval/win_rate')}",
        f"  KL {f('eval/kl')} nats: {s.get('eval/kl_of') or 'KL(policy || reference) per response'}",
        f"  mean length   reference {f('eval/length_reference', '{:.1f}')}  ->  policy {f('eval/length_policy', '{:.1f}')} tokens",
        f"  training spent {f('train/judge_calls', '{:.0f}')} judge calls and {f('train/generated_tokens', '{:.0f}')}"
        f" generated tokens",
        f"  preference pairs: {f('preferences/pairs', '{:.0f}')} (invalid judgments {f('judge/invalid', '{:.0f}')},"
        f" judge agrees with gold on {f('judge/pair_agreement_with_gold', '{:.0%}')} of pairs)",
        f"  precision: {s.get('precision/dtype', 'n/a')} (training autocast {s.get('precision/mixed_precision', 'n/a')})",
        "  time per stage: " + ", ".join(
            f"{st} {s[f'time/{st}_s']:.0f}s{' (cached)' if hits.get(st) else ''}" for st in stages),
        f"  run folder: {out}",
        f"  W&B: {location or 'not tracked (tracker=none)'}",
        "",
    ]
    return "\n".join(lines)
