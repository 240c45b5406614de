"""The arithmetic of PPO for language models, as small pure functions on tensors.

Everything here is independent of models, tokenizers and accelerate, so each piece can be checked
against numbers worked out by hand (``tests/test_ppo_math.py``). The conventions follow Ziegler et
al. 2019 and Huang et al. 2024 ("The N Implementation Details of RLHF with PPO"):

* tensors are ``(batch, response_tokens)``; ``mask`` is 1.0 on real response tokens (EOS included)
  and 0.0 on padding after the response and on episodes excluded from the loss;
* ``values[:, t]`` is V of the state *before* response token ``t`` is sampled;
* "masked" statistics ignore padded positions entirely: padding never shifts a mean or a variance.

Nothing in this module reads or writes global state; the KL controllers carry their own state and
expose ``state_dict``/``load_state_dict`` for checkpoints.
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is 1 (padding may hold anything, even NaN, and is ignored)."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1; 0 where nothing is unmasked (not NaN).

    An all-masked minibatch (every episode unscorable) then contributes a zero loss and zero
    gradient instead of poisoning the update with 0/0.
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over positions where ``mask`` is 1 (Bessel-corrected when ``unbiased``).

    Returns 0 when fewer than two positions (one with ``unbiased=False``) are unmasked.
    """
    count = mask.sum()
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    denom = count - 1 if unbiased else count
    return sq / denom if denom > 0 else torch.zeros_like(sq)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to mean 0 and variance 1 over the mask; padded positions come back as 0.

    With ``shift_mean=False`` only the scale changes (the mean is added back), as for rewards whose
    sign carries meaning. With fewer than two unmasked positions there is no variance to divide by,
    and ``x`` is only centred (or returned unchanged without ``shift_mean``).
    """
    mask = mask.to(x.dtype)
    if mask.sum() < 2:
        mean = masked_mean(x, mask)
        out = x - mean if shift_mean else x
        return torch.where(mask.bool(), out, torch.zeros_like(out))
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns ``(advantages, returns)``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where
    ``V_{t+1}`` and ``A_{t+1}`` are 0 past the episode's last unmasked token (the episode ends
    there, so nothing is bootstrapped from padding). ``returns = A + V`` are the value targets.
    Both outputs are 0 on masked positions.
    """
    mask = mask.to(values.dtype)
    keep = mask.bool()
    values = torch.where(keep, values, torch.zeros_like(values))  # padding may hold anything, even NaN
    rewards = torch.where(keep, rewards, torch.zeros_like(rewards))
    steps = rewards.shape[-1]
    next_adv = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    out = []
    for t in reversed(range(steps)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * m
        out.append(adv)
        # a masked position passes nothing back: the step before it is the episode's last
        next_adv = adv
        next_value = values[:, t]
    advantages = torch.stack(out[::-1], dim=-1)
    return advantages, (advantages + values) * mask


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under ``logits`` (``(B, T, V)`` -> ``(B, T)``), computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the categorical distribution at each position: ``-sum p log p``.

    Written with ``log_softmax`` rather than ``logsumexp(z) - E_p[z]``, which cancels badly in
    float32 for peaked distributions.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, cliprange: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, to minimise; returns ``(loss, clipfrac)``.

    ``loss = mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))`` with ``r = exp(logp - logp_old)``,
    i.e. the pessimistic bound: a ratio is cut off only on the side that would over-reward the
    update (``r > 1 + eps`` for ``A > 0``, ``r < 1 - eps`` for ``A < 0``). ``clipfrac`` is the
    fraction of tokens where the clipped term was the one used.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    return loss, clipfrac


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       cliprange_value: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss; returns ``(loss, clipfrac)``.

    ``loss = 0.5 * mean(max((V - R)^2, (V_clip - R)^2))`` with
    ``V_clip = V_old + clip(V - V_old, -eps_v, eps_v)``: the value may not profit from moving
    further than ``eps_v`` from its rollout-time estimate (the OpenAI baselines / lm-human-
    preferences form). ``clipfrac``: fraction of tokens where the clipped error was larger.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    clipfrac = masked_mean((clipped_err > unclipped_err).to(values.dtype), mask)
    return loss, clipfrac


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean((logp - logp_old)^2)``: how far one update moved the policy from the sampler."""
    return 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over the mask: 1 perfect, 0 no better than a constant, <0 worse.

    NaN when the returns do not vary (nothing to explain).
    """
    var_r = masked_var(returns, mask)
    if var_r <= 0:
        return torch.tensor(float("nan"))
    return 1.0 - masked_var(returns - values, mask) / var_r


def kl_penalty_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                       kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``-kl_coef * (logp - logp_ref)``, with the score added at the last token.

    Uses the k1 estimator of KL(policy || reference) (its sum over a sampled response is an
    unbiased estimate of the sequence KL). Returns ``(rewards, kl)`` where ``kl`` is the per-token
    k1 term (0 on padding). Episodes with no unmasked token receive nothing.
    """
    mask = mask.to(logprobs.dtype)
    kl = torch.where(mask.bool(), logprobs - ref_logprobs, torch.zeros_like(logprobs))
    rewards = -kl_coef * kl
    length = mask.sum(-1).long()
    has = length > 0
    last = (length - 1).clamp(min=0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows[has], last[has]] += scores[has].to(rewards.dtype)
    return rewards, kl


class FixedKLController:
    """A constant KL coefficient (``target_kl: null``)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019's proportional controller steering the sequence KL towards ``target``.

    After each batch: ``error = clip(kl / target - 1, -0.2, 0.2)`` and
    ``value *= 1 + error * n_steps / horizon``, with ``n_steps`` the episodes in the batch. A KL
    above target raises the coefficient, below target lowers it, by at most 20% per ``horizon``
    episodes.
    """

    def __init__(self, kl_coef: float, target: float, horizon: float = 10000):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL control needs target_kl > 0 and kl_horizon > 0 (got {target}, {horizon})")
        self.value, self.target, self.horizon = float(kl_coef), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class RunningMoments:
    """Running mean and variance of every score seen so far (Chan et al.'s parallel update).

    ``reward_norm: running`` standardises each batch's judge scores with these statistics (the
    batch itself included), so a judge on a 1-10 scale and one giving log-probability differences
    produce rewards of similar size and the KL coefficient means the same thing for both.
    """

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    @property
    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count > 1 else 1.0

    def update(self, xs: torch.Tensor) -> None:
        xs = xs.double().flatten()
        n = int(xs.numel())
        if n == 0:
            return
        mean = float(xs.mean())
        m2 = float(((xs - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def normalize(self, xs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        return (xs - self.mean) / (self.std + eps)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
