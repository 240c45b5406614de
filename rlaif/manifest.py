"""What a run needs to be reproduced: written as manifest.json in the run folder and sent to W&B.

Contents: the resolved (redacted) config, the command line, package versions, the rlaif source's git
commit and dirty flag, model identities (weights hash or hub revision; the embedded GGUF's
sha256), the judge's criterion wording, and the hardware.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("rlaif", "torch", "transformers", "trl", "wandb", "datasets", "accelerate", "peft", "hydra-core",
            "omegaconf", "gguf", "vaderSentiment", "numpy", "safetensors", "tokenizers", "llama_cpp_python")


def package_versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(path: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout holding rlaif's source (None outside a git checkout)."""
    path = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def build_manifest(config: dict, models: dict[str, str], criterion: dict, seed: int) -> dict[str, Any]:
    return {"config": config, "argv": list(sys.argv), "seed": seed, "packages": package_versions(),
            "git": git_state(), "models": models, "criterion": criterion, "hardware": hardware()}
