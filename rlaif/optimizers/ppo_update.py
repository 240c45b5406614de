"""PPO's update: ``ppo_epochs`` passes of clipped policy and value losses over shuffled
minibatches, with the check that stops training on a non-finite loss or weight.

``PPOUpdateMixin`` moves tensors and gradients; the losses themselves are ``ppo_math``'s.
"""

from __future__ import annotations

import math

import torch

from rlaif.optimizers import ppo_math as pm
from rlaif.optimizers.base import NonFiniteLossError
from rlaif.optimizers.ppo_rollout import Rollout


def _mix(*parts: int) -> int:
    """A seed from several integers (seed, iteration, ...), stable across runs and machines."""
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p)) % (2**63 - 1)
    return h


class PPOUpdateMixin:
    """The update half of ``rlaif.optimizers.ppo._PPORun``: one iteration's gradient steps.

    Reads the run's ``opt``, ``ctx``, ``acc``, ``model``, ``optimizer``, ``trainable``, ``mini`` and
    ``micro`` (set by ``_PPORun._setup``) and ``_latest_checkpoint`` (``PPOCheckpointMixin``).
    """

    def _update(self, ro: Rollout, advantages, returns, mask, iteration: int) -> dict[str, float]:
        opt, acc, ctx = self.opt, self.acc, self.ctx
        b, R, T = ro.responses.shape[0], ro.responses.shape[1], ctx.temperature
        sums = {k: 0.0 for k in ("policy_loss", "value_loss", "loss", "policy_clipfrac", "value_clipfrac", "approx_kl")}
        count, grad_norms = 0, []
        hint = ("Lower optimizer.learning_rate, set optimizer.reward_clip (and reward_norm: running), or check that "
                "the reward returns finite scores (NaN only where it cannot score)")
        gen = torch.Generator().manual_seed(_mix(ctx.seed, iteration, 1))
        for _epoch in range(opt.ppo_epochs):
            perm = torch.randperm(b, generator=gen).to(acc.device)
            for m0 in range(0, b, self.mini):
                for u0 in range(m0, m0 + self.mini, self.micro):
                    idx = perm[u0 : u0 + self.micro]
                    with acc.accumulate(self.model):
                        logits, vpred = self.model(ro.input_ids[idx], ro.attention_mask[idx], ro.position_ids[idx], R)
                        new_logp = pm.logprobs_from_logits(logits.float() / T, ro.responses[idx])
                        mk = mask[idx]
                        pg_loss, pg_cf = pm.clipped_policy_loss(new_logp, ro.logprobs[idx], advantages[idx], mk,
                                                                opt.cliprange)
                        vf_loss, vf_cf = pm.clipped_value_loss(vpred.float(), ro.values[idx], returns[idx], mk,
                                                               opt.cliprange_value)
                        loss = pg_loss + opt.vf_coef * vf_loss
                        losses = torch.stack([pg_loss, vf_loss, loss]).detach()
                        if acc.num_processes > 1:  # every process stops together, none waits in a collective
                            losses = acc.reduce(losses, reduction="sum")
                        for what, value in zip(("policy_loss", "value_loss", "total loss"), losses.tolist(),
                                               strict=True):
                            self._check_finite(f"PPO {what}", value, iteration, hint)
                        acc.backward(loss)
                        if acc.sync_gradients and opt.max_grad_norm is not None:
                            gn = acc.clip_grad_norm_(self.model.parameters(), opt.max_grad_norm)
                            grad_norms.append(float(gn))
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    with torch.no_grad():
                        kl = pm.approx_kl(new_logp, ro.logprobs[idx], mk)
                    for k, v in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("loss", loss),
                                 ("policy_clipfrac", pg_cf), ("value_clipfrac", vf_cf), ("approx_kl", kl)):
                        sums[k] += float(v.detach())
                    count += 1
        if not all(bool(torch.isfinite(p).all()) for p in self.trainable):
            self._check_finite(f"a PPO weight (gradient norms {grad_norms[-3:]})", float("nan"), iteration, hint)
        stats = {k: v / max(count, 1) for k, v in sums.items()}
        if grad_norms:
            stats["grad_norm"] = sum(grad_norms) / len(grad_norms)
        return stats

    def _check_finite(self, name: str, value: float, iteration: int, hint: str) -> None:
        """Stop with ``NonFiniteLossError`` naming the checkpoint a rerun resumes from (nothing is saved)."""
        if math.isfinite(value):
            return
        last = self._latest_checkpoint()
        where = (f"the last good checkpoint, {last}, is kept and a rerun resumes from it" if last is not None
                 else "no checkpoint had been written yet")
        raise NonFiniteLossError(f"{name} became {value} in PPO iteration {iteration + 1}; training stopped and "
                                 f"{where}. {hint}")

    def _mean_all(self, stats: dict[str, float]) -> dict[str, float]:
        """Average per-process metrics over processes (equal local batch sizes: the global mean)."""
        if self.acc.num_processes == 1:
            return stats
        keys = sorted(stats)
        t = self.acc.reduce(torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.acc.device),
                            reduction="mean")
        return dict(zip(keys, t.tolist(), strict=True))
