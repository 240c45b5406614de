"""PPO's arithmetic against numbers worked out by hand (rlaif/optimizers/ppo_math.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.optimizers import ppo_math as pm


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_three_steps_by_hand():
    # gamma 0.9, lam 0.8 (gamma * lam = 0.72), rewards [1, 0, 2], values [0.5, 1.0, 1.5]
    # delta_2 = 2 + 0.9*0   - 1.5 = 0.5    A_2 = 0.5
    # delta_1 = 0 + 0.9*1.5 - 1.0 = 0.35   A_1 = 0.35 + 0.72*0.5  = 0.71
    # delta_0 = 1 + 0.9*1.0 - 0.5 = 1.4    A_0 = 1.4  + 0.72*0.71 = 1.9112
    adv, ret = pm.gae(t([1.0, 0.0, 2.0]), t([0.5, 1.0, 1.5]), t([1, 1, 1]), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t([1.9112, 0.71, 0.5]))
    torch.testing.assert_close(ret, t([2.4112, 1.71, 2.0]))  # returns = A + V


def test_gae_padded_batch_by_hand():
    # row 0, four steps: rewards [0, 0, 0, 1], values [0.1, 0.2, 0.3, 0.4]
    # delta_3 = 1 - 0.4 = 0.6               A_3 = 0.6
    # delta_2 = 0.9*0.4 - 0.3 = 0.06        A_2 = 0.06 + 0.72*0.6     = 0.492
    # delta_1 = 0.9*0.3 - 0.2 = 0.07        A_1 = 0.07 + 0.72*0.492   = 0.42424
    # delta_0 = 0.9*0.2 - 0.1 = 0.08        A_0 = 0.08 + 0.72*0.42424 = 0.3854528
    # row 1: the three-step example, then one padded position holding garbage (even NaN) that must
    # neither be bootstrapped from nor receive an advantage.
    rewards = t([0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 2.0, 123.0])
    values = t([0.1, 0.2, 0.3, 0.4], [0.5, 1.0, 1.5, float("nan")])
    mask = t([1, 1, 1, 1], [1, 1, 1, 0])
    adv, ret = pm.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t([0.3854528, 0.42424, 0.492, 0.6], [1.9112, 0.71, 0.5, 0.0]))
    torch.testing.assert_close(ret, t([0.4854528, 0.62424, 0.792, 1.0], [2.4112, 1.71, 2.0, 0.0]))


def test_gae_gamma_one_lam_one_is_reward_to_go_minus_value():
    adv, _ = pm.gae(t([1.0, 2.0, 3.0]), t([0.5, 0.5, 0.5]), t([1, 1, 1]), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, t([5.5, 4.5, 2.5]))


def test_whitening_uses_only_the_mask():
    x = t([1.0, 2.0, 3.0, 1000.0], [4.0, 5.0, -1000.0, float("nan")])
    mask = t([1, 1, 1, 0], [1, 1, 0, 0])
    w = pm.masked_whiten(x, mask)
    assert float(pm.masked_mean(w, mask)) == pytest.approx(0.0, abs=1e-9)
    assert float(pm.masked_var(w, mask)) == pytest.approx(1.0, abs=1e-6)
    assert w[0, 3] == 0 and w[1, 2] == 0 and w[1, 3] == 0  # padding comes back as 0, not NaN
    # by hand: the five kept values 1,2,3,4,5 have mean 3 and unbiased variance 2.5
    torch.testing.assert_close(w[0, :3], t(-2.0, -1.0, 0.0) / math.sqrt(2.5))
    kept = pm.masked_whiten(x, mask, shift_mean=False)
    assert float(pm.masked_mean(kept, mask)) == pytest.approx(3.0)


def test_masked_statistics_of_nothing_are_zero_not_nan():
    x, none = t([1.0, float("nan")]), t([0, 0])
    assert float(pm.masked_mean(x, none)) == 0.0
    assert float(pm.masked_var(x, none)) == 0.0
    assert torch.equal(pm.masked_whiten(x, none), t([0.0, 0.0]))


def test_policy_loss_clips_on_the_optimistic_side_only():
    eps = 0.2
    ratio = t([1.5, 0.5, 1.5, 0.5, 1.1, 50.0])
    adv = t([1.0, 1.0, -1.0, -1.0, 2.0, 1.0])
    mask = t([1, 1, 1, 1, 1, 0])  # the last token is padding with an absurd ratio
    # per token max(-A r, -A clip(r)):
    #   r=1.5 A=+1: max(-1.5, -1.2) = -1.2 clipped   r=0.5 A=+1: max(-0.5, -0.8) = -0.5
    #   r=1.5 A=-1: max( 1.5,  1.2) =  1.5           r=0.5 A=-1: max( 0.5,  0.8) =  0.8 clipped
    #   r=1.1 A=+2: inside the range, -2.2
    loss, clipfrac = pm.clipped_policy_loss(ratio.log(), torch.zeros_like(ratio), adv, mask, eps)
    assert float(loss) == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8 - 2.2) / 5)
    assert float(clipfrac) == pytest.approx(2 / 5)


def test_policy_loss_gradient_vanishes_when_clipped():
    logp = torch.log(torch.tensor([1.5, 0.5], dtype=torch.float64)).requires_grad_()
    loss, _ = pm.clipped_policy_loss(logp, torch.zeros(2, dtype=torch.float64), t(1.0, -1.0), t(1, 1), 0.2)
    loss.backward()
    assert torch.equal(logp.grad, t(0.0, 0.0))  # both tokens beyond the clip on their optimistic side


def test_value_loss_clipping_by_hand():
    # eps_v = 0.2; V_clip = V_old + clip(V - V_old, -0.2, 0.2); loss = 0.5 * mean(max(err, err_clip))
    values = t([0.5, 0.1, 1.5, -0.5, 1.1])
    old = t([0.0, 0.0, 0.0, 0.0, 1.0])
    returns = t([1.0, 1.0, 1.0, -1.0, 1.0])
    #   V=0.5  -> V_clip=0.2:  max(0.25, 0.64) = 0.64 clipped
    #   V=0.1  -> V_clip=0.1:  0.81 both
    #   V=1.5  -> V_clip=0.2:  max(0.25, 0.64) = 0.64 clipped
    #   V=-0.5 -> V_clip=-0.2: max(0.25, 0.64) = 0.64 clipped
    #   V=1.1 (old 1.0) inside: 0.01 both
    loss, clipfrac = pm.clipped_value_loss(values, old, returns, t([1, 1, 1, 1, 1]), 0.2)
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.81 + 0.64 + 0.64 + 0.01) / 5)
    assert float(clipfrac) == pytest.approx(3 / 5)


def test_kl_penalty_rewards_put_the_score_on_the_last_token():
    logp = t([-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0])
    ref = t([-1.5, -2.0, -2.0], [-1.0, -1.0, -1.0])
    mask = t([1, 1, 0], [0, 0, 0])  # row 1: an episode left out of the loss gets nothing
    rewards, kl = pm.kl_penalty_rewards(logp, ref, t(2.0, 5.0), mask, kl_coef=0.1)
    torch.testing.assert_close(kl, t([0.5, 0.0, 0.0], [0.0, 0.0, 0.0]))
    torch.testing.assert_close(rewards, t([-0.05, 2.0, 0.0], [0.0, 0.0, 0.0]))


def test_adaptive_kl_controller_follows_the_target():
    ctl = pm.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, n_steps=100)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 100 / 10000)
    assert ctl.value == pytest.approx(0.1 * 1.002)
    up = ctl.value
    ctl.update(6.6, n_steps=100)  # error 0.1
    assert ctl.value == pytest.approx(up * 1.001)
    high = ctl.value
    ctl.update(3.0, n_steps=100)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(high * 0.998) and ctl.value < high
    ctl.update(6.0, n_steps=100)  # on target: no change
    assert ctl.value == pytest.approx(high * 0.998)
    again = pm.AdaptiveKLController(0.5, target=6.0)
    again.load_state_dict(ctl.state_dict())
    assert again.value == ctl.value


def test_fixed_kl_controller_never_moves():
    ctl = pm.FixedKLController(0.05)
    for kl in (0.0, 1.0, 100.0, -5.0):
        ctl.update(kl, n_steps=1000)
    assert ctl.value == 0.05


def test_explained_variance():
    mask = t([1, 1, 1, 1, 0])
    returns = t([1.0, 2.0, 3.0, 4.0, 99.0])
    assert float(pm.explained_variance(returns, returns, mask)) == pytest.approx(1.0)
    assert float(pm.explained_variance(torch.full_like(returns, 2.5), returns, mask)) == pytest.approx(0.0)
    # residuals [0, 0, 0, -1]: unbiased variance 0.25; Var[R] = 5/3 -> 1 - 0.25 / (5/3) = 0.85
    values = t([1.0, 2.0, 3.0, 5.0, -7.0])
    assert float(pm.explained_variance(values, returns, mask)) == pytest.approx(0.85)
    assert math.isnan(float(pm.explained_variance(values, torch.ones(5, dtype=torch.float64), mask)))


def test_entropy_and_logprobs_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, -3.0, 1.0, 2.0]]])
    ent = pm.entropy_from_logits(logits)
    assert float(ent[0, 0]) == pytest.approx(math.log(4))
    exact = torch.distributions.Categorical(logits=logits[0, 1].double()).entropy()
    assert float(ent[0, 1]) == pytest.approx(float(exact), rel=1e-4)  # float32 on a peaked distribution
    lp = pm.logprobs_from_logits(logits, torch.tensor([[2, 0]]))
    assert float(lp[0, 0]) == pytest.approx(math.log(0.25))
    assert float(lp[0, 1]) == pytest.approx(float(torch.log_softmax(logits[0, 1], -1)[0]))


def test_approx_kl():
    assert float(pm.approx_kl(t(0.1, -0.2, 5.0), t(0.0, 0.0, 0.0), t(1, 1, 0))) == pytest.approx(0.5 * 0.05 / 2)


def test_running_moments_match_the_whole_sample():
    a, b = t(1.0, 2.0, 3.0), t(10.0, 20.0)
    m = pm.RunningMoments()
    m.update(a)
    m.update(b)
    both = torch.cat([a, b])
    assert m.mean == pytest.approx(float(both.mean()))
    assert m.std == pytest.approx(float(both.std(unbiased=False)))
    restored = pm.RunningMoments()
    restored.load_state_dict(m.state_dict())
    torch.testing.assert_close(restored.normalize(b), (b - both.mean()) / both.std(unbiased=False), atol=1e-6, rtol=0)
    fresh = pm.RunningMoments()
    assert fresh.std == 1.0  # nothing seen yet: scores pass through unscaled
