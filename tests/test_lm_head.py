"""The full-logits LM head that DPO uses on a CPU agrees with TRL's chunked kernel, in values and
gradients, and is only active inside ``plain_lm_head()``."""

import pytest
import torch

from rlaif.optimizers import lm_head
from rlaif.optimizers.lm_head import PlainLogProbFunction, log_probs, plain_lm_head

trl_utils = pytest.importorskip("trl.trainer.utils")
from trl.kernels import ChunkedLogProbFunction  # noqa: E402

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _inputs(n=37, h=12, v=301, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = (torch.randn(v, h, generator=g) * 0.7).requires_grad_(True)
    b = torch.randn(v, generator=g, requires_grad=True) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, targets


def _grads(fn, hidden, weight, bias, targets, scaling, mix=(1.0, 0.3)):
    leaves = [x for x in (hidden, weight, bias) if x is not None]
    for x in leaves:
        x.grad = None
    out = fn(hidden, weight, bias, targets, *scaling)
    (mix[0] * (out[0] * torch.linspace(0.5, 1.5, len(out[0]))).sum() + mix[1] * out[1].sum()).backward()
    return out, [x.grad.clone() for x in leaves]


@pytest.mark.parametrize("scaling", [(1.0, None, 1.0), (0.7, 30.0, 0.5), (1.3, None, 2.0)],
                         ids=["plain", "softcap-scale-temperature", "temperature"])
@pytest.mark.parametrize("tile", [10**9, 700], ids=["one-tile", "many-tiles"])
def test_values_and_gradients_match_trl(monkeypatch, scaling, tile):
    monkeypatch.setattr(lm_head, "ROW_ELEMENTS", tile)
    temperature, softcap, scale = scaling
    ours, g_ours = _grads(lambda h, w, b, t, *s: log_probs(h, w, b, t, *s, outputs=OUTPUTS),
                          *_inputs(), (temperature, softcap, scale))
    theirs, g_theirs = _grads(lambda h, w, b, t, *s: ChunkedLogProbFunction.apply(h, w, b, t, s[0], 64, s[1], s[2],
                                                                                  OUTPUTS),
                              *_inputs(), (temperature, softcap, scale))
    for name, a, b in zip(OUTPUTS, ours, theirs, strict=True):
        if name == "is_top1":
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_unrequested_outputs_are_none_and_log_probs_alone_backpropagate():
    hidden, weight, bias, targets = _inputs(bias=False)
    out = log_probs(hidden, weight, bias, targets)
    assert out[1:] == (None, None, None, None)
    out[0].sum().backward()
    ref = torch.log_softmax(hidden.detach() @ weight.detach().t(), -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(out[0].detach(), ref, rtol=1e-5, atol=1e-5)
    assert hidden.grad is not None and weight.grad is not None


def test_bfloat16_autocast_keeps_float32_gradients_close_to_float32():
    hidden, weight, bias, targets = _inputs(bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = log_probs(hidden, weight, bias, targets)
    out[0].sum().backward()
    assert out[0].dtype == torch.float32 and weight.grad.dtype == torch.float32
    exact = torch.log_softmax(hidden.detach() @ weight.detach().t(), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert (out[0].detach() - exact).abs().max() < 0.1  # bfloat16 logits: rounding, not a different function


def test_a_second_backward_pass_is_refused():
    hidden, weight, bias, targets = _inputs()
    out = log_probs(hidden, weight, bias, targets)
    out[0].sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        out[0].sum().backward()


def test_active_only_inside_the_block_and_large_logits_fall_back(monkeypatch):
    original = trl_utils._ChunkedLogProbFunction
    with plain_lm_head():
        assert trl_utils._ChunkedLogProbFunction is PlainLogProbFunction
        hidden, weight, bias, targets = _inputs(n=8, v=50)
        calls = []
        monkeypatch.setattr(lm_head, "MAX_LOGITS", 8 * 50 - 1)  # one element too many: TRL's kernel
        monkeypatch.setattr(lm_head, "log_probs", lambda *a, **k: calls.append("ours"))
        out = PlainLogProbFunction.apply(hidden, weight, bias, targets, 1.0, 16, None, 1.0, ("log_probs",))
        assert calls == [] and out[0].shape == (8,)
        monkeypatch.setattr(lm_head, "MAX_LOGITS", 8 * 50)
        PlainLogProbFunction.apply(hidden, weight, bias, targets, 1.0, 16, None, 1.0, ("log_probs",))
        assert calls == ["ours"]
    assert trl_utils._ChunkedLogProbFunction is original
