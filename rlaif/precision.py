"""Automatic precision: which dtype this machine runs fastest without losing what training needs.

``dtype: auto`` (and ``mixed_precision: auto``) is the default wherever a config chooses one.
``resolve_config`` replaces every ``auto`` in a composed config by the concrete choice before
anything uses it, so cache keys, the resolved config and the manifest only ever see the resolved
dtype (the same config gives the same keys on every machine that resolves it alike).

The choice, made once per process:

* CUDA: bfloat16 where the device supports it, else float16;
* CPU: bfloat16 only when the CPU runs it natively (AVX512-BF16 or AMX, as torch reports them,
  confirmed by a short measured matmul probe), else float32. On a CPU without native bfloat16 a
  bfloat16 matmul can run tens of times slower than float32 (it is emulated).

Training keeps float32 weights (Adam's state needs the precision) and computes in the chosen
precision through ``mixed_precision`` autocast; ``optimizer.dtype`` / ``reward_model.dtype``
``auto`` therefore mean float32, and ``mixed_precision: auto`` means bf16, fp16 or no.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

INFERENCE_DTYPES = ("float32", "bfloat16", "float16")
MIXED = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}
# Keys whose dtype is the dtype of weights being trained (float32 under "auto"); every other
# `dtype` / `*_dtype` key is an inference dtype.
TRAINING_DTYPE_KEYS = ("optimizer.dtype", "reward_model.dtype")


@dataclass(frozen=True)
class Precision:
    device: str  # "cuda" or "cpu"
    dtype: str  # inference dtype chosen for "auto"
    mixed_precision: str  # training autocast chosen for "auto": bf16 | fp16 | no
    reason: str  # one sentence a user can read
    native_bf16: bool
    bf16_slowdown: float | None  # measured float32 / bfloat16 matmul throughput ratio on CPU (None on CUDA)

    def as_dict(self) -> dict:
        return asdict(self)


def _matmul_seconds(dtype, n: int = 256) -> float:
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # first call pays one-off kernel selection
    t = time.perf_counter()
    a @ b
    return time.perf_counter() - t


def measure_bf16_slowdown(reps: int = 7) -> float:
    """How many times longer a bfloat16 matmul takes than a float32 one on this CPU: the two timed
    in turn, ``reps`` times each, best of each. On a busy machine a single timing can be several
    times its idle value (the other process holds the cores); the best of interleaved timings is not
    (measured: an idle native ratio of 0.3-1x read as 2-4x from single timings beside another torch
    process)."""
    import torch

    best = {torch.bfloat16: float("inf"), torch.float32: float("inf")}
    for _ in range(reps):
        for dtype in best:
            best[dtype] = min(best[dtype], _matmul_seconds(dtype))
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


def _cpu_bf16_flags() -> tuple[bool | None, str]:
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = {"AMX": getattr(cpu, "_is_amx_tile_supported", None),
              "AVX512-BF16": getattr(cpu, "_is_avx512_bf16_supported", None)}
    known = {name: bool(f()) for name, f in checks.items() if callable(f)}
    if not known:
        return None, "torch does not report bfloat16 support on this CPU"
    have = [name for name, ok in known.items() if ok]
    cap = torch.backends.cpu.get_cpu_capability()
    if have:
        return True, f"the CPU has {' and '.join(have)} (torch capability {cap})"
    return False, f"the CPU has neither AMX nor AVX512-BF16 (torch capability {cap})"


# A bfloat16 matmul this many times slower than float32 is emulated, whatever the CPU reports
# (native: 0.2-1x here; emulated: 75-145x). The threshold sits far from both, so that a busy
# machine's timing noise cannot flip the choice (which would change a rerun's dtype and results).
NOT_NATIVE_SLOWDOWN = 8.0
# Where torch cannot say whether the CPU has native bfloat16, the measurement alone decides, and
# bfloat16 must then be about as fast as float32.
UNKNOWN_NATIVE_SLOWDOWN = 1.5


def decide(cuda: str | None, cuda_bf16: bool, cpu_flags: bool | None, why: str, slowdown: float | None) -> Precision:
    """The rule, from what the machine reports.

    ``cuda``: the CUDA device's name, or None on CPU; ``cpu_flags``: whether the CPU reports native
    bfloat16 (None when torch cannot tell, and then the measured ``slowdown`` -- bfloat16 matmul
    time over float32 -- decides: native bfloat16 is no slower). Reported support with a slowdown
    above ``NOT_NATIVE_SLOWDOWN`` counts as emulated.
    """
    if cuda is not None:
        if cuda_bf16:
            return Precision("cuda", "bfloat16", "bf16", f"{cuda} supports bfloat16", True, None)
        return Precision("cuda", "float16", "fp16", f"{cuda} has no bfloat16; float16 instead", False, None)
    if cpu_flags is None:
        cpu_flags = slowdown is not None and slowdown <= UNKNOWN_NATIVE_SLOWDOWN
        why = "a measured bfloat16 matmul was " + ("no slower" if cpu_flags else "slower") + " than float32"
    elif cpu_flags and slowdown is not None and slowdown > NOT_NATIVE_SLOWDOWN:
        # The hardware has it but torch's kernels do not use it (ATEN_CPU_CAPABILITY or
        # ONEDNN_MAX_CPU_ISA set lower, a build without them): measured 145x slower than float32.
        cpu_flags = False
        why += ", but a measured bfloat16 matmul was much slower than float32 (its kernels are not native here)"
    # The reason stays free of the measured number, so that it can sit in a run's summary, which
    # reruns reproduce exactly; the number is in the manifest (bf16_slowdown).
    if cpu_flags:
        return Precision("cpu", "bfloat16", "bf16", f"{why}: native bfloat16", True, slowdown)
    return Precision("cpu", "float32", "no", f"{why}: bfloat16 would be emulated, float32 instead", False, slowdown)


@functools.lru_cache(maxsize=1)
def detect() -> Precision:
    """This machine's precision, decided once per process."""
    import torch

    if torch.cuda.is_available():
        return decide(torch.cuda.get_device_name(0), torch.cuda.is_bf16_supported(), None, "", None)
    flags, why = _cpu_bf16_flags()
    return decide(None, False, flags, why, measure_bf16_slowdown())


def inference_dtype(name: str) -> str:
    return detect().dtype if name == "auto" else name


def mixed_precision(name: str) -> str:
    return detect().mixed_precision if name == "auto" else name


def training_dtype(name: str) -> str:
    return "float32" if name == "auto" else name


def _dtype_keys(node, prefix: str = ""):
    """(path, parent, key) of every dtype-like key of a DictConfig, interpolations skipped."""
    from omegaconf import DictConfig, ListConfig

    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, _ in list(items):
        path = f"{prefix}.{key}" if prefix else str(key)
        child = node._get_node(key)
        if child is None or child._is_interpolation():
            continue
        if isinstance(child, (DictConfig, ListConfig)):
            yield from _dtype_keys(child, path)
        elif isinstance(key, str) and (key == "dtype" or key.endswith("_dtype") or key == "mixed_precision"):
            yield path, node, key


def resolve_config(cfg) -> list[str]:
    """Replace every ``auto`` dtype / mixed precision in ``cfg`` (in place); return the keys resolved.

    Warns once per key set to bfloat16 (or bf16 autocast) on a CPU that emulates it.
    """
    from omegaconf import open_dict

    chosen, slow = [], []
    for path, parent, key in _dtype_keys(cfg):
        value = parent._get_node(key)._value()
        if value == "auto":
            if key == "mixed_precision":
                new = mixed_precision("auto")
            elif path in TRAINING_DTYPE_KEYS or path.endswith("optimizer.dtype"):
                new = training_dtype("auto")
            else:
                new = inference_dtype("auto")
            with open_dict(parent):
                parent[key] = new
            chosen.append(path)
        elif value in ("bfloat16", "bf16"):
            slow.append(path)
    if slow:
        p = detect()
        if p.device == "cpu" and not p.native_bf16:
            warnings.warn(
                f"{', '.join(slow)}: bfloat16 on a CPU without native bfloat16 ({p.reason}); expect it to run "
                f"about {p.bf16_slowdown:.0f}x slower than float32. Set {slow[0]}=auto (or float32) to run fast.",
                stacklevel=2)
    return chosen


_announced = False


def announce(keys: list[str]) -> None:
    """Print the choice and its reason, once per process."""
    global _announced
    if _announced or not keys:
        return
    _announced = True
    p = detect()
    print(f"rlaif: precision {p.dtype} (training: float32 weights, autocast {p.mixed_precision}) because {p.reason}; "
          f"set by dtype: auto in {', '.join(keys)}", flush=True)


def summary(keys: list[str], training_autocast: str | None = None) -> dict:
    """``precision/*`` keys for a run's summary. ``training_autocast``: the optimizer's resolved
    ``mixed_precision`` (what its training ran under; an explicit ``no`` stays ``no``); None: the
    machine's choice."""
    p = detect()
    return {"precision/device": p.device, "precision/dtype": p.dtype,
            "precision/mixed_precision": training_autocast or p.mixed_precision, "precision/reason": p.reason}
