"""Per-token log-probabilities for TRL's trainers on a CPU: the whole vocabulary at once.

TRL (1.16) replaces the LM head of the models its DPO trainer trains with a chunked kernel
(``trl.kernels.ChunkedLogProbFunction``) that never materialises the ``[tokens, vocab]`` logits.
With Triton (CUDA, XPU) that is one fused pass. Elsewhere it falls back to a dozen torch passes per
vocabulary chunk and recomputes every chunk in the backward pass. On a 2-core CPU with
SmolLM2-135M and 8 pairs of ~60 tokens, that fallback took 30 s of a 49 s DPO run, more than the
transformer itself.

``plain_lm_head()`` swaps in ``PlainLogProbFunction`` while a trainer is built and trained. It
has the same inputs and outputs; it computes the logits with one matmul and keeps them, takes the
softmax statistics in float32 tile by tile, and in the backward pass turns each tile into its
gradient in place before one matmul per input. It falls back to TRL's kernel on Triton devices, for DTensor
weights (FSDP) and when the logits would exceed ``MAX_LOGITS`` elements (``tokens x vocab``; 512 MiB
in float32), so memory stays bounded on long sequences. The values agree with TRL's to float
rounding (tests/test_lm_head.py).
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MAX_LOGITS = 2**27  # tokens x vocab per call; larger calls use TRL's chunked kernel


class PlainLogProbFunction:
    """``ChunkedLogProbFunction.apply``'s signature over full logits: returns ``(log_probs, entropy,
    log_sum_sq_probs, mean_logits, is_top1)``, each ``[tokens]``, the optional ones ``None`` unless
    named in ``outputs``. ``log_probs`` and ``entropy`` are differentiable; the rest are not."""

    fallback = None  # TRL's ChunkedLogProbFunction while plain_lm_head() is active

    @classmethod
    def apply(cls, hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("log_probs",)):
        if not usable(hidden, weight):
            return cls.fallback.apply(hidden, weight, bias, targets, temperature, chunk_size,
                                      final_logit_softcapping, logit_scale, outputs)
        return log_probs(hidden, weight, bias, targets, temperature, final_logit_softcapping, logit_scale, outputs)


def usable(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the full-logits path is the faster one here (no Triton device, logits small enough)."""
    if hidden.device.type in ("cuda", "xpu") or type(weight).__name__ == "DTensor":
        return False
    return hidden.shape[0] * weight.shape[0] <= MAX_LOGITS


ROW_ELEMENTS = 2**22  # logits per elementwise tile (16 MiB in float32): rows = ROW_ELEMENTS // vocab


def log_probs(hidden, weight, bias, targets, temperature=1.0, final_logit_softcapping=None, logit_scale=1.0,
              outputs=("log_probs",)):
    """The per-token outputs of ``hidden @ weight.T (+ bias)`` scaled as TRL scales them: times
    ``logit_scale``, soft-capped, divided by ``temperature``; softmax statistics in float32."""
    return _FullLogits.apply(hidden, weight, bias, targets, float(temperature), final_logit_softcapping,
                             float(logit_scale), tuple(outputs))


def _scale(z, logit_scale, softcap, temperature):
    if logit_scale != 1.0:
        z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    if temperature != 1.0:
        z = z * (1.0 / temperature)
    return z


class _FullLogits(torch.autograd.Function):
    """One GEMM for the logits (kept in the compute dtype for the backward pass), the softmax
    statistics row tile by row tile so each elementwise pass stays in cache, and in the backward
    pass the logits gradient written over the kept logits, then one GEMM for each input's
    gradient. On a 2-core CPU a float32 pass over [1500, 49152] logits took 0.3-0.9 s as whole
    tensors and 2-7x less tile by tile."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, softcap, logit_scale, outputs):
        ctx.set_materialize_grads(False)
        dev = hidden.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
        with torch.autocast(dev, enabled=False):
            logits = F.linear(hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
        n, vocab = logits.shape
        log_z = torch.empty(n, dtype=torch.float32, device=hidden.device)
        picked, entropy, sq, mean, top1 = (torch.empty_like(log_z) for _ in range(5))
        top1 = top1.bool()
        rows = max(1, ROW_ELEMENTS // vocab)
        for a in range(0, n, rows):
            z = _scale(logits[a:a + rows].float(), logit_scale, softcap, temperature)
            t = targets[a:a + rows]
            m = z.amax(-1, keepdim=True)
            e = torch.exp(z - m)
            s = e.sum(-1)
            lz = m.squeeze(-1) + torch.log(s)
            log_z[a:a + rows] = lz
            picked[a:a + rows] = z.gather(-1, t.unsqueeze(-1)).squeeze(-1) - lz
            if "entropy" in outputs:
                entropy[a:a + rows] = lz - (e * z).sum(-1) / s
            if "log_sum_sq_probs" in outputs:
                sq[a:a + rows] = torch.log((e * e).sum(-1)) - 2 * torch.log(s)
            if "mean_logits" in outputs:
                mean[a:a + rows] = z.mean(-1)
            if "is_top1" in outputs:
                top1[a:a + rows] = z.argmax(-1) == t  # the first maximum, as TRL counts it
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, entropy)
        ctx.logits, ctx.scaling = logits, (temperature, softcap, logit_scale)
        extras = [x if name in outputs else None for x, name in
                  ((sq, "log_sum_sq_probs"), (mean, "mean_logits"), (top1, "is_top1"))]
        ctx.mark_non_differentiable(*(x for x in extras if x is not None))
        return (picked, entropy if "entropy" in outputs else None, *extras)

    @staticmethod
    def backward(ctx, g_lp, g_ent, *_):
        hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
        logits, (temperature, softcap, logit_scale) = ctx.logits, ctx.scaling
        if logits is None:
            raise RuntimeError("rlaif's full-logits LM head supports one backward pass per forward")
        ctx.logits = None  # the gradient is written over the logits
        n, vocab = logits.shape
        rows = max(1, ROW_ELEMENTS // vocab)
        for a in range(0, n, rows):
            raw = logits[a:a + rows].float()
            z = _scale(raw, logit_scale, softcap, temperature)
            logp = z - log_z[a:a + rows].unsqueeze(-1)
            p = torch.exp(logp)
            grad = torch.zeros_like(z)
            if g_lp is not None:  # d log p_t / dz_j = 1[j = t] - p_j
                gl = g_lp[a:a + rows].float().unsqueeze(-1)
                grad -= gl * p
                grad.scatter_add_(-1, targets[a:a + rows].unsqueeze(-1), gl)
            if g_ent is not None:  # d H / dz_j = -p_j (log p_j + H)
                grad -= g_ent[a:a + rows].float().unsqueeze(-1) * p * (logp + entropy[a:a + rows].unsqueeze(-1))
            if temperature != 1.0:
                grad = grad * (1.0 / temperature)
            if softcap is not None:
                grad = grad * (1 - torch.tanh(raw * logit_scale / softcap) ** 2)
            if logit_scale != 1.0:
                grad = grad * logit_scale
            logits[a:a + rows] = grad
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = (logits @ weight.to(logits.dtype)).to(hidden.dtype) if need_h else None
        grad_w = (logits.t() @ hidden.to(logits.dtype)).to(weight.dtype) if need_w else None
        grad_b = logits.float().sum(0).to(bias.dtype) if need_b and bias is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


@contextlib.contextmanager
def plain_lm_head():
    """Within this block TRL's fused LM head computes through ``PlainLogProbFunction``. A TRL
    without the hook (another version) is left as it is."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:  # pragma: no cover - trl is a dependency
        yield
        return
    original = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if original is None or original is PlainLogProbFunction:
        if original is None:
            log.debug("trl.trainer.utils has no _ChunkedLogProbFunction: TRL's own LM head is used")
        yield
        return
    PlainLogProbFunction.fallback = original
    trl_utils._ChunkedLogProbFunction = PlainLogProbFunction
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction = original
