"""PPO's model and rollouts: the policy and value head as one module, and one iteration's episodes.

``ActorCritic`` runs the policy and its value function in one forward (so accelerate prepares and
DDP syncs both); ``Rollout`` holds one iteration's episodes; ``PPORolloutMixin`` samples them from
the current policy, computes their log-probs, reference log-probs, values and entropies, and
turns the judge's scores into per-episode scores. Nothing here updates a weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rlaif.optimizers import ppo_math as pm
from rlaif.scoring import chat_prefix_ids, left_pad
from rlaif.types import Prompt


class ActorCritic(nn.Module):
    """The policy and its value function as one module, so accelerate prepares (and DDP syncs) both.

    ``value_trunk`` is None for ``value_model: shared``: the value head then reads the policy's
    last hidden states. Otherwise it is a separate copy of the starting trunk.
    """

    def __init__(self, policy: nn.Module, value_head: nn.Linear, value_trunk: nn.Module | None = None):
        super().__init__()
        self.policy, self.value_head, self.value_trunk = policy, value_head, value_trunk

    def forward(self, input_ids, attention_mask, position_ids, response_len: int):
        """Logits predicting each of the last ``response_len`` tokens, and V of the state before each."""
        keep = response_len + 1
        shared = self.value_trunk is None
        out = _lm_forward(self.policy, input_ids, attention_mask, position_ids, keep, hidden=shared)
        logits = out.logits[:, -keep:-1]
        if shared:
            hidden = out.hidden_states[-1][:, -keep:-1]
        else:
            hidden = self.value_trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                      use_cache=False).last_hidden_state[:, -keep:-1]
        with torch.autocast(device_type=hidden.device.type, enabled=False):  # the head stays float32
            values = self.value_head(hidden.float()).squeeze(-1)
        return logits, values


def value_head(hidden: int) -> nn.Linear:
    """A float32 linear value head initialised to zero (Huang et al. 2024): V is 0 for every state at
    the start, so the first advantages are the rewards' own signal, not the noise of a random head."""
    head = nn.Linear(hidden, 1, dtype=torch.float32)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    return head


def _lm_forward(model, input_ids, attention_mask, position_ids, keep: int, hidden: bool = False):
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    if hidden:
        kwargs["output_hidden_states"] = True
    try:
        return model(**kwargs, logits_to_keep=keep)
    except TypeError:  # architectures without logits_to_keep compute every position
        return model(**kwargs)


@dataclass
class Rollout:
    """One iteration's episodes on this process. ``(b, R)`` tensors cover response tokens only."""

    input_ids: torch.Tensor  # (b, Q + R) left-padded prompt, then right-padded response
    attention_mask: torch.Tensor  # (b, Q + R)
    position_ids: torch.Tensor  # (b, Q + R)
    responses: torch.Tensor  # (b, R) response token ids (pad after EOS)
    response_mask: torch.Tensor  # (b, R) float, 1 on response tokens (EOS included)
    logprobs: torch.Tensor  # (b, R) log p of the sampled tokens under the sampling policy
    ref_logprobs: torch.Tensor  # (b, R) ... under the frozen reference
    values: torch.Tensor  # (b, R) V before each token
    entropy: torch.Tensor  # (b, R) entropy of the sampling distribution
    finished: torch.Tensor  # (b,) bool: EOS produced within max_new_tokens
    lengths: torch.Tensor  # (b,) response tokens, EOS included
    texts: list[str]


def _hidden_size(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("hidden_size", "n_embd", "d_model"):
        if getattr(text, key, None):
            return int(getattr(text, key))
    raise ValueError(f"cannot find the hidden size in {type(config).__name__}; a value head needs it")


class PPORolloutMixin:
    """The rollout half of ``rlaif.optimizers.ppo._PPORun``: sampling and scoring one iteration.

    Reads the run's ``opt``, ``ctx``, ``acc``, ``tok``, ``unwrapped``, ``ref``, ``gen_config``,
    ``pad_id``, ``eos_id`` and ``moments`` (set by ``_PPORun._setup``).
    """

    def _seq_logits(self, model, ids, attn, pos, R: int) -> torch.Tensor:
        return _lm_forward(model, ids, attn, pos, R + 1).logits[:, -(R + 1) : -1]

    @torch.no_grad()
    def _rollout(self, prompts: list[Prompt]) -> Rollout:
        ctx, dev, fb = self.ctx, self.acc.device, self.opt.forward_batch_size
        policy = self.unwrapped.policy
        lm = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        queries = [chat_prefix_ids(self.tok, p.messages) for p in prompts]
        responses: list[list[int]] = []
        finished: list[bool] = []
        saved_config, lm.generation_config = lm.generation_config, self.gen_config
        try:
            with self.acc.autocast():
                for s in range(0, len(queries), fb):
                    ids, attn, _ = left_pad(queries[s : s + fb], self.pad_id)
                    out = policy.generate(input_ids=ids.to(dev), attention_mask=attn.to(dev),
                                          generation_config=self.gen_config, logits_processor=[self.sampler])
                    for row in out[:, ids.shape[1] :].tolist():
                        n = row.index(self.eos_id) + 1 if self.eos_id in row else len(row)
                        responses.append(row[:n])
                        finished.append(self.eos_id in row)
        finally:
            lm.generation_config = saved_config
        texts = [self.tok.decode(r, skip_special_tokens=True).strip() for r in responses]

        R = max(len(r) for r in responses)
        q_ids, q_attn, _ = left_pad(queries, self.pad_id)
        resp = torch.full((len(responses), R), self.pad_id, dtype=torch.long)
        resp_mask = torch.zeros((len(responses), R))
        for i, r in enumerate(responses):
            resp[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            resp_mask[i, : len(r)] = 1.0
        input_ids = torch.cat([q_ids, resp], dim=1).to(dev)
        attn = torch.cat([q_attn, resp_mask.long()], dim=1).to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        resp, resp_mask = resp.to(dev), resp_mask.to(dev)

        T = ctx.temperature
        logprobs, ref_logprobs, values, entropy = [], [], [], []
        with self.acc.autocast():
            for s in range(0, len(responses), fb):
                sl = slice(s, s + fb)
                logits, v = self.unwrapped(input_ids[sl], attn[sl], pos[sl], R)
                logits = logits.float() / T
                logprobs.append(pm.logprobs_from_logits(logits, resp[sl]))
                entropy.append(pm.entropy_from_logits(logits))
                values.append(v.float())
                if self.ref is None:  # LoRA: the reference is the base weights
                    with policy.disable_adapter():
                        ref_logits = self._seq_logits(policy, input_ids[sl], attn[sl], pos[sl], R)
                else:
                    ref_logits = self._seq_logits(self.ref, input_ids[sl], attn[sl], pos[sl], R)
                ref_logprobs.append(pm.logprobs_from_logits(ref_logits.float() / T, resp[sl]))
        return Rollout(input_ids, attn, pos, resp, resp_mask, torch.cat(logprobs), torch.cat(ref_logprobs),
                       torch.cat(values), torch.cat(entropy), torch.tensor(finished, device=dev),
                       resp_mask.sum(-1), texts)

    def _scores(self, prompts: list[Prompt], ro: Rollout) -> tuple[torch.Tensor, ...]:
        """Judge scores -> (raw, normalised, final score, loss-valid) per episode.

        NaN (unscorable) episodes get a placeholder 0 score and ``valid=False``: they never become
        labels, with or without the missing-EOS penalty (it adjusts a score, it is not one). Infinite
        scores are not "unscorable" — they flow on and stop training with a clear non-finite loss
        error, since they mean the judge or reward is broken.
        """
        raw_list = self.ctx.reward(prompts, ro.texts)
        if len(raw_list) != len(prompts):
            raise ValueError(f"ctx.reward returned {len(raw_list)} scores for {len(prompts)} completions")
        dev = self.acc.device
        raw = torch.tensor([float(x) for x in raw_list], dtype=torch.float64, device=dev)
        scorable = ~torch.isnan(raw)
        normed = raw.clone()
        if self.opt.reward_norm == "running":
            everyone = self.acc.gather(raw)  # statistics over every process's batch
            self.moments.update(everyone[~torch.isnan(everyone)].cpu())
            normed = self.moments.normalize(raw)
        if self.opt.reward_clip is not None:
            normed = normed.clamp(-self.opt.reward_clip, self.opt.reward_clip)
        score = torch.where(scorable, normed, torch.zeros_like(normed))
        valid = scorable.clone()
        if self.opt.missing_eos_penalty is not None:  # as in TRL: subtracted, so truncation costs a fixed amount
            score = torch.where(ro.finished, score, score - self.opt.missing_eos_penalty)
        return raw, normed, score.float(), valid
