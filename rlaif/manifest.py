"""What a run needs to be reproduced: written as manifest.json in the run folder and sent to W&B.

Contents: the resolved (redacted) config, the command line (redacted), package versions, the rlaif
source's git commit and dirty flag, model identities (weights hash or hub revision; the embedded
GGUF's sha256), the judge's criterion wording, and the hardware.

It also decides what counts as a secret, so that no key reaches a file, W&B or a log:

* a config key or command-line override whose name ends in key/token/secret/password/... (by
  words: ``api_key``, ``hf_token``, ``Authorization``; not ``max_new_tokens``, ``tokenizer`` or
  ``pad_token``); keys ending in ``_env`` name an environment variable and are kept;
* credentials inside URLs (``https://user:pw@host``), bearer tokens and well-known key formats
  (``sk-...``, ``hf_...``, ``ghp_...``) in any string;
* the values of environment variables that hold secrets: those named by a ``*_env`` key of the
  config, and every variable whose own name looks like a secret (``OPENAI_API_KEY``, ``HF_TOKEN``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

MASK = "***"
_SECRET_LAST = {"key", "keys", "apikey", "token", "secret", "secrets", "password", "passwd", "passphrase", "pwd",
                "auth", "authorization", "credential", "credentials", "cookie", "cookies"}
_SECRET_ANY = {"secret", "password", "passwd", "passphrase", "credential", "credentials", "authorization", "apikey"}
_NOT_SECRET_TOKEN = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "answer", "start", "end", "stop"}
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@'\"]+@")
_TOKEN_FORMATS = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})")
_BEARER = re.compile(r"\b(Bearer|Basic|bearer)\s+(?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{12,}")
_ASSIGNMENT = re.compile(r"(?P<key>[A-Za-z_][\w.\[\]-]*)(?P<eq>=|:[ \t]*)(?P<value>'[^'\n]*'|\"[^\"\n]*\"|[^\s,'\"\]}]+)")
_MIN_SECRET_LEN = 6  # shorter values are not searched for in free text (they would match ordinary words)


def is_secret_key(name: str) -> bool:
    """Whether a config key, override or environment variable name says its value is a secret."""
    words = [w.lower() for w in _WORDS.findall(str(name).rsplit(".", 1)[-1])]
    if not words or words[-1] == "env":  # `api_key_env: OPENAI_API_KEY` names a variable; it is not the key
        return False
    if any(w in _SECRET_ANY for w in words) or "".join(words[-2:]) == "apikey":
        return True
    if words[-1] == "token" and len(words) > 1 and words[-2] in _NOT_SECRET_TOKEN:
        return False  # tokenizer settings: pad_token, eos_token
    return words[-1] in _SECRET_LAST


def secret_values(config: Any = None) -> set[str]:
    """Secret strings to scrub from free text: literal values under secret-named keys of ``config``,
    and the values of secret environment variables (named by ``*_env`` keys, or by their own name)."""
    found: set[str] = set()
    env_names = {k for k in os.environ if is_secret_key(k)}

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if str(k).endswith("_env") and isinstance(v, str):
                    env_names.add(v)
                elif is_secret_key(str(k)) and isinstance(v, str):
                    found.add(v)
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(config)
    found.update(os.environ[n] for n in env_names if os.environ.get(n))
    return {v for v in found if len(v) >= _MIN_SECRET_LEN}


def scrub_text(text: str, secrets: Iterable[str] = (), assignments: bool = True) -> str:
    """``text`` with known secret values, URL credentials, bearer tokens and key-shaped strings
    masked; with ``assignments``, also the value of every ``secret_key=value`` or ``secret_key:
    value`` in it (command lines, YAML; not prose, where "key: ..." is an ordinary phrase)."""
    for v in sorted(secrets, key=len, reverse=True):
        text = text.replace(v, MASK)
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _TOKEN_FORMATS.sub(MASK, text)
    text = _BEARER.sub(lambda m: f"{m[1]} {MASK}", text)
    return _mask_assignments(text) if assignments else text


def _mask_assignments(text: str) -> str:
    """``a.api_key=v`` / ``api_key: v`` -> value masked; other values are searched in turn (Hydra's
    ``override_dirname: x=1,+judge.api.api_key=...`` nests overrides in a value)."""
    def mask(m: re.Match) -> str:
        if is_secret_key(m["key"]):
            return f"{m['key']}{m['eq']}{MASK}"
        return f"{m['key']}{m['eq']}{_mask_assignments(m['value'])}"

    return _ASSIGNMENT.sub(mask, text)


def redact(obj: Any, secrets: Iterable[str] | None = None) -> Any:
    """Copy of a (nested) config with every secret masked: values under secret-named keys, and
    secrets inside any string (see ``scrub_text``)."""
    secrets = secret_values(obj) if secrets is None else set(secrets)
    if isinstance(obj, dict):
        return {k: (MASK if is_secret_key(str(k)) and v not in (None, "") else redact(v, secrets))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        return scrub_text(obj, secrets, assignments=False)
    return obj


def literal_secrets(config: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``config`` that hold a value under a secret-looking name (for validation:
    keys belong in environment variables, never in a config that is saved with the run)."""
    out: list[str] = []
    if isinstance(config, dict):
        for k, v in config.items():
            path = f"{prefix}{k}"
            if is_secret_key(str(k)) and v not in (None, "") and not isinstance(v, (dict, list)):
                out.append(path)
            else:
                out.extend(literal_secrets(v, path + "."))
    elif isinstance(config, (list, tuple)):
        for i, v in enumerate(config):
            out.extend(literal_secrets(v, f"{prefix}{i}."))
    return out


def redact_argv(argv: list[str], secrets: Iterable[str] | None = None) -> list[str]:
    """A command line with secrets masked: ``a.api_key=...`` overrides, ``--token x`` flags, and
    secrets inside any argument."""
    secrets = secret_values() if secrets is None else set(secrets)
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        key = arg.split("=", 1)[0].lstrip("+~-")
        if "=" in arg and is_secret_key(key):
            out.append(arg.split("=", 1)[0] + "=" + MASK)
        else:
            out.append(scrub_text(arg, secrets))
            mask_next = arg.startswith("-") and "=" not in arg and is_secret_key(key)
    return out


@contextlib.contextmanager
def redacted_argv(secrets: Iterable[str] | None = None) -> Iterator[None]:
    """Swap ``sys.argv`` for its redacted copy while a library records it (W&B saves it as "args")."""
    saved = sys.argv
    sys.argv = redact_argv(list(saved), secrets)
    try:
        yield
    finally:
        sys.argv = saved


def scrub_files(paths: Iterable[str | Path], config: Any = None) -> list[Path]:
    """Mask secrets in text files written outside rlaif's control (Hydra's ``.hydra/config.yaml``,
    ``overrides.yaml`` and ``hydra.yaml`` hold the command-line overrides verbatim). Returns the
    files changed. YAML ``secret_key: value`` lines are masked whatever the value."""
    from rlaif.io import atomic_write_text

    secrets = secret_values(config)
    changed = []
    for path in map(Path, paths):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        new = scrub_text(text, secrets)
        if new != text:
            atomic_write_text(path, new)
            changed.append(path)
    return changed


def scrub_hydra_dir(run_dir: str | Path, config: Any = None) -> list[Path]:
    """``scrub_files`` on every file of ``<run_dir>/.hydra`` (no-op when there is none)."""
    folder = Path(run_dir) / ".hydra"
    return scrub_files(sorted(folder.glob("*")) if folder.is_dir() else [], config)

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
    return {"config": config, "argv": redact_argv(list(sys.argv), secret_values(config)), "seed": seed,
            "packages": package_versions(),
            "git": git_state(), "models": models, "criterion": criterion, "hardware": hardware()}
