"""Runs launched on several processes: ``torchrun --nproc_per_node N -m rlaif ...`` or
``accelerate launch --num_processes N -m rlaif ...`` (DDP; DeepSpeed and FSDP through an
accelerate config).

Only training is distributed. Process 0 runs the experiment as a one-process run would: it owns
the run folder, the run registry and the W&B run, and computes every other stage (sampling,
judging, diagnostics, evaluation). The other processes compute none of those: each waits for the
stage's entry to appear in the shared stage cache and reads it from there, so all processes train
on the same candidates and pairs. The training stages (``train`` and the distilled reward model)
are entered by every process together: process 0 decides whether the cache already holds the
result, all of them train, and process 0 writes the entry the others then read. Counters each
process keeps (judge calls, generated tokens) are summed over the processes.

The processes therefore need one cache folder they can all read (``cache.enabled=true``; one
machine, or a shared file system across machines). Other processes write nothing of the run:
their scratch run folder is a temporary one, removed when they finish.

Waiting for an entry is done by watching the cache, not through a collective: generation or
judging on process 0 can take longer than a process group's timeout.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Stages every process computes together (they train through accelerate / the HF Trainer).
COLLECTIVE_STAGES = ("reward_model", "train")
# Optimizers whose training runs on several processes (cai_sft splits its revisions between them).
# self_rewarding samples and judges inside its rounds without splitting that work; best_of_n does
# not train.
DISTRIBUTED_OPTIMIZERS = ("dpo", "ppo", "grpo", "rloo", "online_dpo", "cai_sft")
# Final training metrics each process counts for its own share of the samples (summed over processes).
PER_PROCESS_METRICS = ("train/completions_scored", "train/unscorable", "train/unscorable_pairs")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def enabled() -> bool:
    return world_size() > 1


def check(cfg) -> list[str]:
    """Config errors of a multi-process launch (empty in a one-process run)."""
    if not enabled():
        return []
    errors = []
    if not cfg.cache.enabled:
        errors.append(f"cache.enabled=false: a launch on {world_size()} processes shares the stages' results through "
                      "the cache; set cache.enabled=true (and a cache.dir every process can read)")
    name = str(cfg.optimizer.get("name", ""))
    if name not in DISTRIBUTED_OPTIMIZERS:
        errors.append(f"optimizer={name} does not train on several processes; launch it as one process (python -m "
                      f"rlaif / rlaif) or use one of {', '.join(DISTRIBUTED_OPTIMIZERS)}")
    return errors


def init() -> None:
    """Join the process group (gloo on CPU, NCCL on GPUs) and pin this process's GPU."""
    if not enabled():
        return
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0") or 0))
    PartialState(cpu=not torch.cuda.is_available())


def broadcast(value: Any) -> Any:
    """Process 0's ``value`` on every process."""
    if not enabled():
        return value
    import torch.distributed as dist

    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_counters(counters: dict[str, float]) -> dict[str, float]:
    """``counters`` summed over the processes (every process must call this, with the same keys)."""
    if not enabled():
        return dict(counters)
    import torch
    import torch.distributed as dist

    keys = sorted(counters)
    if not keys:
        return {}
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(counters[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def wait_for_entry(cache, stage: str, key: str, poll_s: float = 0.5) -> Path:
    """Process 0's cache entry of (stage, key), once it is complete."""
    t0 = last_note = time.monotonic()
    while True:
        hit = cache.get(stage, key)
        if hit is not None:
            return hit
        now = time.monotonic()
        if now - last_note > 60:
            log.info("process %d: waiting for process 0 to finish the %s stage (%.0f s)", rank(), stage, now - t0)
            last_note = now
        time.sleep(poll_s)
