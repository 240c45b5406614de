"""dtype: auto -- the rule, its resolution in a composed config, and what a run records of it."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from rlaif import precision
from rlaif.cache import stable_hash


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}.{i}")
    else:
        yield prefix, node


def _dtype_values(cfg) -> dict[str, str]:
    tree = OmegaConf.to_container(cfg, resolve=False)
    return {k: v for k, v in _leaves(tree)
            if k.rsplit(".", 1)[-1] in ("dtype", "mixed_precision") or k.endswith("_dtype")}


def test_the_rule():
    gpu = precision.decide("H100", True, None, "", None)
    assert (gpu.dtype, gpu.mixed_precision) == ("bfloat16", "bf16")
    old_gpu = precision.decide("V100", False, None, "", None)
    assert (old_gpu.dtype, old_gpu.mixed_precision) == ("float16", "fp16")
    amx = precision.decide(None, False, True, "the CPU has AMX", 0.5)
    assert (amx.dtype, amx.mixed_precision, amx.native_bf16) == ("bfloat16", "bf16", True)
    avx2 = precision.decide(None, False, False, "the CPU has neither AMX nor AVX512-BF16", 75.0)
    assert (avx2.dtype, avx2.mixed_precision, avx2.native_bf16) == ("float32", "no", False)
    assert "emulated" in avx2.reason and "75" not in avx2.reason  # the summary's reason carries no timing
    # Where torch cannot tell, the measured probe decides.
    assert precision.decide(None, False, None, "", 0.6).dtype == "bfloat16"
    assert precision.decide(None, False, None, "", 40.0).dtype == "float32"
    # Reported support whose kernels are not used (ATEN_CPU_CAPABILITY=avx2 on an AMX CPU) is emulated.
    off = precision.decide(None, False, True, "the CPU has AMX", 145.0)
    assert (off.dtype, off.native_bf16) == ("float32", False) and "not native" in off.reason
    assert precision.decide(None, False, True, "the CPU has AMX", precision.NOT_NATIVE_SLOWDOWN).dtype == "bfloat16"
    # A busy machine: native bfloat16 timed at 2-4x float32 beside another torch process stays native
    # (a flip would change a rerun's dtype, its cache keys and its numbers).
    assert precision.decide(None, False, True, "the CPU has AMX", 4.0).dtype == "bfloat16"
    assert precision.decide(None, False, None, "", precision.UNKNOWN_NATIVE_SLOWDOWN).dtype == "bfloat16"
    assert precision.decide(None, False, None, "", 3.0).dtype == "float32"


def test_detect_follows_what_torch_reports_on_this_machine():
    p = precision.detect()
    if torch.cuda.is_available():
        assert p.device == "cuda"
        return
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert p.device == "cpu" and p.native_bf16 == native
    assert p.dtype == ("bfloat16" if native else "float32")
    assert p.bf16_slowdown is not None and p.bf16_slowdown > 0
    assert precision.detect() is p  # decided once per process


def test_every_auto_in_a_composed_config_resolves(tiny_model):
    for optimizer in ("dpo", "ppo", "grpo", "self_rewarding", "cai_sft"):
        cfg = compose_config([f"optimizer={optimizer}", f"policy.model={tiny_model}"])
        before = _dtype_values(cfg)
        assert "auto" in before.values(), before
        keys = precision.resolve_config(cfg)
        after = _dtype_values(cfg)
        assert "auto" not in after.values(), after
        assert set(keys) == {k for k, v in before.items() if v == "auto"}
        p = precision.detect()
        assert after.get("optimizer.dtype", "float32") == "float32"  # trained weights stay float32 under auto
        assert after["generator.dtype"] == after["judge.dtype"] == after["evaluation.dtype"] == p.dtype
        if "optimizer.mixed_precision" in after:
            assert after["optimizer.mixed_precision"] == p.mixed_precision


def test_cache_keys_see_only_the_resolved_dtype(tiny_model):
    p = precision.detect()
    auto = compose_config([f"policy.model={tiny_model}"])
    explicit = compose_config([f"policy.model={tiny_model}", f"generator.dtype={p.dtype}", f"judge.dtype={p.dtype}",
                               f"evaluation.dtype={p.dtype}", "optimizer.dtype=float32",
                               f"optimizer.mixed_precision={p.mixed_precision}", f"reward_model.judge_dtype={p.dtype}",
                               "reward_model.dtype=float32", f"reward_model.mixed_precision={p.mixed_precision}"])
    other = "float32" if p.dtype != "float32" else "bfloat16"
    different = compose_config([f"policy.model={tiny_model}", f"generator.dtype={other}"])
    for c in (auto, explicit, different):
        precision.resolve_config(c)
    key = lambda c: stable_hash(OmegaConf.to_container(c, resolve=True))  # noqa: E731
    assert key(auto) == key(explicit)
    assert key(auto) != key(different)


def test_explicit_bfloat16_on_a_cpu_that_emulates_it_warns(monkeypatch, tiny_model):
    emulated = precision.decide(None, False, False, "the CPU has neither AMX nor AVX512-BF16", 42.0)
    monkeypatch.setattr(precision, "detect", lambda: emulated)
    cfg = compose_config([f"policy.model={tiny_model}", "judge.dtype=bfloat16"])
    with pytest.warns(UserWarning) as caught:
        precision.resolve_config(cfg)
    msg = str(caught[0].message)
    assert "judge.dtype" in msg and "42x slower" in msg and "judge.dtype=auto" in msg
    assert cfg.judge.dtype == "bfloat16"  # an explicit choice is kept
    assert cfg.generator.dtype == "float32"  # auto follows the (emulating) CPU
    native = precision.decide(None, False, True, "the CPU has AMX", 0.5)
    monkeypatch.setattr(precision, "detect", lambda: native)
    cfg = compose_config([f"policy.model={tiny_model}", "judge.dtype=bfloat16"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.resolve_config(cfg)


def test_a_run_records_the_choice(tiny_model, tmp_path, capsys):
    from rlaif.pipeline import run

    overrides = [f"policy.model={tiny_model}", f"cache.dir={tmp_path / 'cache'}", "data.num_train=4",
                 "data.num_eval=2", "generator.num_candidates=2", "generator.max_new_tokens=4", "optimizer.epochs=1",
                 "optimizer.batch_size=4", "evaluation.samples_per_prompt=1", "tracker=none", "diagnostics=none"]
    precision._announced = False
    out = tmp_path / "run"
    summary = run(compose_config(overrides), output_dir=out)
    p = precision.detect()
    assert summary["precision/dtype"] == p.dtype and summary["precision/reason"] == p.reason
    assert summary["precision/mixed_precision"] == p.mixed_precision  # optimizer.mixed_precision: auto
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"]["dtype"] == p.dtype
    assert "generator.dtype" in manifest["precision"]["auto_keys"]
    resolved = OmegaConf.load(out / "resolved_config.yaml")
    assert resolved.generator.dtype == p.dtype and resolved.optimizer.dtype == "float32"
    printed = capsys.readouterr().out
    assert printed.count(f"rlaif: precision {p.dtype}") == 1 and p.reason in printed


def test_the_summary_reports_the_autocast_training_ran_under():
    p = precision.detect()
    assert precision.summary([], "no")["precision/mixed_precision"] == "no"  # an explicit choice, not the machine's
    assert precision.summary([], None)["precision/mixed_precision"] == p.mixed_precision
