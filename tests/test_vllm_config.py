"""What a config that asks for vLLM gets, with or without vLLM installed: ``engine: auto`` follows the
generator, a missing vLLM or a bad engine setting fails before any model loads, naming the key
and the fix. The real-vLLM tests are in tests/test_vllm.py."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import compose_config

from rlaif.backends.vllm import INSTALL, resolve_engines
from rlaif.config import ConfigError
from rlaif.pipeline import run

no_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")


def test_engine_auto_follows_the_generator(tiny_overrides):
    cfg = compose_config([*tiny_overrides, "generator=vllm", "judge=panel"])
    on_vllm = resolve_engines(cfg)
    assert cfg.judge.engine == "vllm" and cfg.evaluation.engine == "vllm"
    assert {"generator", "judge.engine", "evaluation.engine"} <= set(on_vllm)
    cfg = compose_config([*tiny_overrides, "judge.engine=vllm"])
    assert resolve_engines(cfg) == ["judge.engine"] and cfg.evaluation.engine == "transformers"
    cfg = compose_config(tiny_overrides)
    assert resolve_engines(cfg) == [] and cfg.judge.engine == "transformers"


@no_vllm
@pytest.mark.parametrize(("override", "back"), [
    ("generator=vllm", "generator=hf"), ("judge.engine=vllm", "judge.engine=transformers"),
    ("evaluation.engine=vllm", "evaluation.engine=transformers"),
    ("optimizer=grpo optimizer.vllm.enabled=true", "optimizer.vllm.enabled=false")])
def test_asking_for_vllm_without_it_fails_before_any_model_loads(override, back, tiny_overrides, tmp_path):
    cfg = compose_config([*tiny_overrides, *override.split(), "tracker=none"])
    with pytest.raises(ConfigError) as e:
        run(cfg, output_dir=tmp_path / "run")
    key = override.split()[-1].split("=")[0]
    msg = str(e.value)
    assert f"{key}: vLLM is not installed" in msg and INSTALL in msg, msg
    assert back in msg, msg
    assert not (tmp_path / "run" / "candidates.jsonl").exists()


@pytest.mark.parametrize(("override", "says"), [
    ("vllm.gpu_memory_utilization=1.5", "vllm.gpu_memory_utilization: 1.5 must be <= 1"),
    ("vllm.tensor_parallel_size=0", "vllm.tensor_parallel_size: 0 must be >= 1"),
    ("+vllm.kv_cache=4", "vllm.kv_cache: unknown key"),
    ("judge.engine=onnx", "judge.engine: 'onnx' is not one of 'auto', 'transformers' or 'vllm'"),
    ("evaluation.engine=tensorrt", "evaluation.engine: 'tensorrt' is not one of"),
])
def test_bad_engine_settings_are_refused_naming_the_key(override, says, tiny_overrides, tmp_path):
    cfg = compose_config([*tiny_overrides, override, "tracker=none"])
    with pytest.raises(ConfigError, match="Invalid config") as e:
        run(cfg, output_dir=tmp_path / "run")
    assert says in str(e.value), str(e.value)


@pytest.mark.parametrize("optimizer", ["grpo", "rloo", "online_dpo"])
def test_trl_vllm_options_reach_trls_own_config(optimizer, tiny_overrides, tmp_path):
    """optimizer.vllm becomes TRL's use_vllm / vllm_* fields, which TRL's config classes accept."""
    from hydra.utils import instantiate

    cfg = compose_config([*tiny_overrides, f"optimizer={optimizer}", "optimizer.vllm.enabled=true",
                          "optimizer.vllm.gpu_memory_utilization=0.25"])
    opt = instantiate(cfg.optimizer)
    args = opt.vllm.trl_args()
    if optimizer == "online_dpo":
        from trl.experimental.online_dpo import OnlineDPOConfig as Config
    else:
        from trl import GRPOConfig, RLOOConfig

        Config = GRPOConfig if optimizer == "grpo" else RLOOConfig
    made = Config(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True, **args)
    assert made.use_vllm is True and made.vllm_mode == "colocate" and made.vllm_gpu_memory_utilization == 0.25
    off = instantiate(compose_config([*tiny_overrides, f"optimizer={optimizer}"]).optimizer)
    assert off.vllm.trl_args() == {"use_vllm": False}
