"""The registry of reproductions: which paper each ``conf/experiment/paper/<name>`` config
reproduces, the claim its check tests, and where it runs (``cpu``: a ``<name>_cpu`` config with
the embedded model and bundled data; ``full``: the paper's models and datasets from the hub)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    name: str  # conf/experiment/paper/<name>.yaml (full scale) and <name>_cpu.yaml
    citation: str
    arxiv: str  # id, the version read and how its numbers were checked ([P] paper or code, [S] secondary copies)
    claim: str  # what a faithful reproduction must show
    check: str  # rlaif.reproductions.checks name
    cpu: bool = True  # a CPU-scale version exists (zephyr_ddpo's CPU version is a smoke run only)


REGISTRY: dict[str, Paper] = {p.name: p for p in [
    Paper("dpo_sentiment", "Rafailov et al. 2023, Direct Preference Optimization", "2305.18290 (version not verified; numbers [S])",
          "DPO's reward-KL frontier lies on or above PPO's; smaller beta gives larger KL", "dpo_frontier"),
    Paper("rlaif_labeler", "Lee et al. 2023, RLAIF: Scaling Reinforcement Learning from Human Feedback with AI Feedback",
          "2309.00267v2 (full text read [P])", "averaging both orders removes the slot preference from labels; labeler alignment per "
          "judge with its confidence interval; RLAIF beats SFT; direct against distilled RLAIF", "rlaif_labeler"),
    Paper("constitutional", "Bai et al. 2022, Constitutional AI: Harmlessness from AI Feedback", "2212.08073 (version not verified; [S])",
          "harmlessness (by a gold labeller the training judge is not) rises while helpfulness does not drop by more "
          "than a stated margin", "constitutional"),
    Paper("self_rewarding", "Yuan et al. 2024, Self-Rewarding Language Models", "2401.10020 (version not verified; [S])",
          "win rate rises across iterations; judge accuracy on the audit pairs and length drift reported each "
          "iteration", "self_rewarding"),
    Paper("oaif", "Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback", "2402.04792 (version not verified; [S])",
          "online DPO at or above offline DPO on gold at matched judge calls; a 'be brief' annotator shortens "
          "responses", "oaif"),
    Paper("overoptimization", "Gao et al. 2022, Scaling Laws for Reward Model Overoptimization", "2210.10760 (version not verified; paper-text excerpt [P])",
          "gold rises then falls (or flattens) while the proxy keeps rising, against KL_bon = log n - (n-1)/n",
          "overoptimization"),
    Paper("alpacafarm_pool", "Dubois et al. 2023, AlpacaFarm", "2305.14387 (version not verified; [S])",
          "the ranking of methods under a noisy simulated annotator pool against the gold labeller's (Spearman)",
          "alpacafarm_pool"),
    Paper("zephyr_ddpo", "Tunstall et al. 2023, Zephyr: Direct Distillation of LM Alignment", "2310.16944 (version not verified; [S])",
          "DPO on UltraFeedback binarized (MT-Bench 7.34 at full scale); here a smoke run on a bundled file of the "
          "same format", "zephyr_smoke", cpu=False),
    Paper("length_bias", "Singhal et al. 2023, A Long Way to Go: Investigating Length Correlations in RLHF",
          "2310.03716 (version not verified; code [P], headline [S])", "a length-only reward against the judge's reward under a length-biased judge: the "
          "length-controlled win rate exposes the difference the raw win rate hides", "length_bias"),
]}
