"""Security: secrets never reach a file, W&B or a log; code shipped with a model or a pickle never
runs unless the user opts in; prompt files are data and are never evaluated.

Real parts: a whole tiny pipeline run with W&B offline whose judge is served by llama.cpp's
OpenAI-compatible server on 127.0.0.1, started with ``--api_key`` so that it refuses requests
without the key (skipped where llama-cpp-python's server is not installed); the ``rlaif`` command
in a subprocess (with Hydra's own ``.hydra/`` files); model folders whose code or pickle would leave
a marker file if run. Between the run and the server sits a small forwarding proxy that records
what went over the wire (the texts and headers the judge sent); it changes nothing. An error page
that echoes the credentials it received is a behaviour the real server cannot produce: that case
is tested against a canned server in tests/test_api.py (test_api_key_is_sent_and_never_shown,
test_credentials_in_base_url_are_basic_auth_and_shown_nowhere).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from conftest import compose_config
from llama_server import MODEL_ID, LlamaServer, require_server

import rlaif
from rlaif.config import ConfigError, validate
from rlaif.data import load_prompts, truncate_prompts
from rlaif.manifest import build_manifest, is_secret_key, redact, redact_argv, scrub_text

REPO = Path(rlaif.__file__).resolve().parent.parent
ENV_KEY = "sk-rlaif-env-0123456789abcdefghijklmnop"  # in the environment, named by judge.api.api_key_env
URL_SECRET = "url-password-5f3a9c1e"  # a password inside a URL in the config and on the command line
LITERAL = "sk-rlaif-literal-9876543210zyxwvutsrq"  # a key mistakenly written into the config


def files_containing(root: Path, *secrets: str) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            found += [f"{p} holds {s[:10]}..." for s in secrets if s.encode() in data]
    return found


# ---- what counts as a secret -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["api_key", "apiKey", "OPENAI_API_KEY", "hf_token", "HF_TOKEN", "access_token",
                                  "password", "db_password", "client_secret", "Authorization", "credentials",
                                  "x_api_keys", "cookie", "WANDB_API_KEY"])
def test_secret_names(name):
    assert is_secret_key(name)


@pytest.mark.parametrize("name", ["api_key_env", "max_new_tokens", "answer_tokens", "generated_tokens", "tokenizer",
                                  "pad_token", "eos_token", "num_tokens", "token_budget", "author", "keyword", "monkey"])
def test_not_secret_names(name):
    assert not is_secret_key(name)


def test_redact_masks_secrets_and_keeps_everything_else(monkeypatch):
    monkeypatch.setenv("MY_SERVER_CRED", ENV_KEY)
    cfg = {"judge": {"api": {"api_key_env": "MY_SERVER_CRED", "api_key": LITERAL,
                             "base_url": f"https://rlaif:{URL_SECRET}@api.example.com/v1",
                             "extra_body": {"note": f"uses {ENV_KEY} for auth"}}},
           "generator": {"max_new_tokens": 48, "answer_tokens": ["1", "2"], "tokenizer": "gpt2"},
           "criteria": {"description": "The key: be honest. Basic kindness and a Bearer of good news."},
           "headers": [{"Authorization": "Bearer abcdef0123456789xyz"}], "hf_token": None}
    out = redact(cfg)
    text = json.dumps(out)
    assert LITERAL not in text and ENV_KEY not in text and URL_SECRET not in text and "abcdef0123" not in text
    assert out["judge"]["api"]["api_key"] == "***" and out["judge"]["api"]["api_key_env"] == "MY_SERVER_CRED"
    assert out["judge"]["api"]["base_url"] == "https://***@api.example.com/v1"
    assert out["generator"] == cfg["generator"]  # counts and tokenizer names are not secrets
    assert out["criteria"] == cfg["criteria"]  # prose is left alone
    assert out["hf_token"] is None


@pytest.mark.parametrize("path", sorted((REPO / "conf").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_no_shipped_setting_is_redacted(path):
    """Redaction must not hide real settings: the resolved config is what reproduces a run."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert redact(cfg) == cfg


def test_command_lines_and_yaml_are_scrubbed(monkeypatch):
    monkeypatch.setenv("RLAIF_TEST_SECRET_KEY", ENV_KEY)
    argv = ["rlaif", f"+judge.api.api_key={LITERAL}", "--password", "hunter2hunter2", f"--token={LITERAL}",
            f"judge.api.base_url=http://u:{URL_SECRET}@h/v1", "generator.max_new_tokens=7", f"+x.note={ENV_KEY}"]
    out = redact_argv(argv)
    assert out == ["rlaif", "+judge.api.api_key=***", "--password", "***", "--token=***",
                   "judge.api.base_url=http://***@h/v1", "generator.max_new_tokens=7", "+x.note=***"]
    yaml = f"judge:\n  api:\n    api_key: {LITERAL}\n    api_key_env: RLAIF_TEST_SECRET_KEY\nmax_new_tokens: 7\n"
    assert scrub_text(yaml) == "judge:\n  api:\n    api_key: ***\n    api_key_env: RLAIF_TEST_SECRET_KEY\nmax_new_tokens: 7\n"


def test_manifest_argv_is_redacted(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["rlaif", f"judge.api.base_url=http://u:{URL_SECRET}@h/v1",
                                      f"+policy.hf_token={LITERAL}"])
    manifest = build_manifest({}, {}, {}, 0)
    assert manifest["argv"] == ["rlaif", "judge.api.base_url=http://***@h/v1", "+policy.hf_token=***"]


@pytest.mark.parametrize("override", [f"+judge.api.api_key={LITERAL}", f"+policy.hf_token={LITERAL}",
                                      f"+tracker.password={LITERAL}", "+judge.api.api_key=${oc.env:HOME}"])
def test_a_key_written_into_the_config_is_refused_without_showing_it(override):
    api = '{base_url: "http://127.0.0.1:9/v1", api_key_env: OPENAI_API_KEY}'
    cfg = compose_config(["judge=pairwise", f"judge.api={api}", override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    key = override.split("=", 1)[0].lstrip("+")
    assert f"{key}: looks like a secret written into the config" in msg
    assert "api_key_env" in msg and "environment variable" in msg
    assert LITERAL not in msg and os.environ.get("HOME", "/nowhere") not in msg


# ---- a whole run: nothing secret in any file, W&B record or log line ------------------------------

HOSTILE = [
    "${oc.env:HOME} is where the film was shot, ${now:%Y}",
    "{__import__('os').system('touch MARKER')} a thriller {0} {text} {{text}} %(name)s",
    "{{ ''.__class__.__mro__[1].__subclasses__() }} {% for x in range(3) %}loop{% endfor %} {# jinja #}",
    "$(touch MARKER) `touch MARKER`; rm -rf / # shell",
    "<script>alert('x')</script> \\n \\u0000 \" quotes ' and a tab\t here",
    "plain opening: the cast was superb",
]


def hostile_file(tmp_path: Path) -> tuple[Path, list[str], Path]:
    marker = tmp_path / "MARKER"
    texts = [t.replace("MARKER", str(marker)) for t in HOSTILE]
    path = tmp_path / "hostile.jsonl"
    path.write_text("".join(json.dumps({"id": f"h{i}", "text": t}) + "\n" for i, t in enumerate(texts)),
                    encoding="utf-8")
    return path, texts, marker


class RecordingProxy:
    """Forwards every POST to ``upstream`` unchanged and records its JSON body and headers."""

    def __init__(self, upstream: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        origin = upstream.split("/v1")[0]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.requests.append(json.loads(raw or b"{}"))
                proxy.headers.append(dict(self.headers))
                sent = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                resp = httpx.post(origin + self.path, content=raw, headers=sent, timeout=120)
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def secret_run(tiny_model, tmp_path_factory):
    """One tiny run: pairwise judge over HTTP with the key in the environment (the server requires
    it), a password in the judge's base_url on the command line, hostile prompt texts, W&B offline,
    logs to a file."""
    from _pytest.monkeypatch import MonkeyPatch

    from rlaif.pipeline import run

    require_server()
    tmp = tmp_path_factory.mktemp("secret-run")
    data, texts, marker = hostile_file(tmp)
    server = LlamaServer(tmp, api_key=ENV_KEY).start()
    mp = MonkeyPatch()
    log_file = tmp / "all.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    try:
        unauthorised = httpx.post(f"{server.base_url}/chat/completions", timeout=60,
                                  json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]})
        with RecordingProxy(server.base_url) as proxy:
            mp.setenv("RLAIF_TEST_SECRET_KEY", ENV_KEY)
            api = (f'{{base_url: "http://rlaif:{URL_SECRET}@127.0.0.1:{proxy.port}/v1", '
                   f'api_key_env: RLAIF_TEST_SECRET_KEY, max_retries: 1, backoff_s: 0.01, max_concurrency: 1}}')
            overrides = [f"policy.model={tiny_model}", f"cache.dir={tmp / 'cache'}", f"data.path={data}",
                         "data.template='Continue this movie review: {text}'", "data.num_train=4",
                         "data.num_eval=2", "generator.num_candidates=2", "generator.max_new_tokens=6",
                         "generator.dtype=float32", "judge=pairwise", f"judge.model={MODEL_ID}", f"judge.api={api}",
                         "judge.dtype=float32", "optimizer.epochs=1", "optimizer.batch_size=4",
                         "optimizer.mixed_precision=no", "evaluation.samples_per_prompt=1",
                         "diagnostics.probe_items=0", "tracker=wandb"]
            mp.setattr(sys, "argv", ["rlaif", *overrides])  # what the CLI would see (W&B records it)
            root.addHandler(handler)
            root.setLevel(logging.DEBUG)
            out = tmp / "run"
            summary = run(compose_config(overrides), output_dir=out)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
        mp.undo()
        server.stop()
    return {"tmp": tmp, "out": out, "summary": summary, "server": proxy, "texts": texts, "marker": marker,
            "log": log_file, "unauthorised": unauthorised.status_code}


def test_run_used_the_key_but_wrote_it_nowhere(secret_run, capfd):
    out, tmp = secret_run["out"], secret_run["tmp"]
    auth = [h.get("Authorization") for h in secret_run["server"].headers]
    assert auth and all(a == f"Bearer {ENV_KEY}" for a in auth)  # the key was really used ...
    assert secret_run["unauthorised"] == 401  # ... the server refuses requests without it ...
    assert secret_run["summary"]["judge/api_failures"] == 0  # ... and took every one of the run's
    assert 0 < secret_run["summary"]["judge/api_requests"] <= len(auth)  # labelling; evaluation asks too
    assert (out / "wandb").is_dir() and list((out / "wandb").glob("offline-run-*"))
    assert (out / "manifest.json").exists() and (out / "resolved_config.yaml").exists()
    # every file of the run folder, the cache (records, journals, registry) and the full DEBUG log
    assert files_containing(tmp, ENV_KEY, URL_SECRET) == []
    assert secret_run["log"].stat().st_size > 0
    captured = capfd.readouterr()
    assert ENV_KEY not in captured.out + captured.err


def test_redacted_files_still_say_how_the_run_was_configured(secret_run):
    out = secret_run["out"]
    resolved = (out / "resolved_config.yaml").read_text()
    assert "api_key_env: RLAIF_TEST_SECRET_KEY" in resolved  # the variable's name is kept
    assert "base_url: http://***@127.0.0.1:" in resolved
    assert "max_new_tokens: 6" in resolved and "answer_tokens:" in resolved  # settings are not masked
    manifest = json.loads((out / "manifest.json").read_text())
    assert any('judge.api={base_url: "http://***@127.0.0.1:' in a for a in manifest["argv"])
    record = next((out / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    assert b"judge.api={base_url" in record  # W&B recorded the command line ("args") ...
    assert b'base_url: "http://***@127.0.0.1:' in record  # ... redacted
    # the judge's identity in the records names the server without the credentials
    verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert verdicts and {v["judge"] for v in verdicts} == {f"pairwise:{MODEL_ID}"}


def test_prompt_texts_reach_records_and_the_judge_verbatim(secret_run):
    out, texts = secret_run["out"], secret_run["texts"]
    records = [json.loads(x) for x in (out / "prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["text"] for r in records) == sorted(texts)
    for r in records:
        assert r["messages"] == [{"role": "user", "content": f"Continue this movie review: {r['text']}"}]
    sent = json.dumps([b["messages"] for b in secret_run["server"].requests], ensure_ascii=False)
    train = [r["text"] for r in records if r["split"] == "train"]
    assert all(json.dumps(t, ensure_ascii=False)[1:-1] in sent for t in train)  # the judge saw them as written
    assert not secret_run["marker"].exists()
    assert os.environ.get("HOME", "/nowhere") not in (out / "prompts.jsonl").read_text(encoding="utf-8")


def test_cli_refuses_a_key_in_the_config_and_leaves_it_in_no_file(tiny_model, tmp_path):
    """The real command: Hydra writes the overrides to .hydra/ before rlaif runs; they are scrubbed."""
    script = Path(sys.executable).parent / "rlaif"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "rlaif"]
    api = '{base_url: "http://127.0.0.1:9/v1", api_key_env: RLAIF_TEST_SECRET_KEY}'
    run_dir = tmp_path / "run"
    args = [f"policy.model={tiny_model}", f"cache.dir={tmp_path / 'cache'}", "judge=pairwise", f"judge.api={api}",
            f"+judge.api.api_key={LITERAL}", f"hydra.run.dir={run_dir}", "tracker=none"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    res = subprocess.run(cmd + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "judge.api.api_key: looks like a secret written into the config" in res.stderr
    assert LITERAL not in res.stdout + res.stderr
    assert (run_dir / ".hydra" / "overrides.yaml").exists()  # Hydra wrote its files ...
    assert "judge.api.api_key=***" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert files_containing(tmp_path, LITERAL) == []  # ... with the key masked


# ---- code shipped with a model -------------------------------------------------------------------

CUSTOM_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("executed")
from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = {model_type!r}


class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
"""


def custom_code_folder(tiny_model: str, tmp_path: Path, model_type: str) -> tuple[Path, Path]:
    folder, marker = tmp_path / f"model-{model_type}", tmp_path / f"EXECUTED-{model_type}"
    shutil.copytree(tiny_model, folder)
    (folder / "custom_modeling.py").write_text(CUSTOM_CODE.format(marker=str(marker), model_type=model_type))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = model_type
    cfg["auto_map"] = {"AutoConfig": "custom_modeling.CustomConfig",
                       "AutoModelForCausalLM": "custom_modeling.CustomModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, marker


def test_model_code_is_not_run_by_default(tiny_model, tmp_path):
    from rlaif.models import ModelLoadError, ModelPool, load_causal_lm

    folder, marker = custom_code_folder(tiny_model, tmp_path, "rlaif_custom")
    assert compose_config([]).policy.trust_remote_code is False
    pool = ModelPool(cache_dir=tmp_path / "cache")  # what the pipeline builds with the default config
    with pytest.raises(ModelLoadError) as e:
        pool.model(str(folder))
    msg = str(e.value)
    assert str(folder) in msg and "custom_modeling.py" in msg and "policy.trust_remote_code=true" in msg
    with pytest.raises(ModelLoadError, match="policy.trust_remote_code=true"):
        load_causal_lm(str(folder))  # the path optimizers use
    assert not marker.exists()


def test_model_code_beside_a_known_architecture_is_ignored(tiny_model, tmp_path):
    from rlaif.models import ModelPool

    folder, marker = custom_code_folder(tiny_model, tmp_path, "llama")
    model = ModelPool(cache_dir=tmp_path / "cache").model(str(folder))
    assert type(model).__name__ == "LlamaForCausalLM"  # transformers' own class, not the folder's
    assert not marker.exists()


def test_model_code_runs_when_the_user_opts_in(tiny_model, tmp_path):
    """The control: the same folder does run its code with policy.trust_remote_code=true (so the
    marker's absence above means something)."""
    folder, marker = custom_code_folder(tiny_model, tmp_path, "rlaif_custom")
    code = ("import sys; from rlaif.models import ModelPool; "
            "print(type(ModelPool(trust_remote_code=True).model(sys.argv[1])).__name__)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    res = subprocess.run([sys.executable, "-c", code, str(folder)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "CustomModel" and marker.read_text() == "executed"


# ---- pickle weights ---------------------------------------------------------------------------------

class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_weights_are_refused_unless_allowed(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    from rlaif.models import ModelLoadError, ModelPool, load_causal_lm, resolve_model

    folder = tmp_path / "bin-model"
    shutil.copytree(tiny_model, folder)
    state = load_file(str(folder / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    assert compose_config([]).policy.allow_pickle is False
    with pytest.raises(ModelLoadError) as e:
        resolve_model(str(folder), cache_dir=tmp_path / "cache")  # refused before anything loads
    msg = str(e.value)
    assert str(folder) in msg and "pytorch_model.bin" in msg and "policy.allow_pickle=true" in msg
    with pytest.raises(ModelLoadError, match="policy.allow_pickle=true"):
        load_causal_lm(str(folder))
    # opted in: converted once to a safetensors folder in the cache, with the same weights
    pool = ModelPool(cache_dir=tmp_path / "cache", allow_pickle=True)
    model = pool.model(str(folder))
    converted = Path(pool.resolve(str(folder)).path)
    assert converted != folder and (converted / "model.safetensors").exists()
    assert converted.is_relative_to(tmp_path / "cache")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items() if k in model.state_dict())


def test_a_malicious_pickle_is_never_unpickled(tiny_model, tmp_path):
    from rlaif.models import ModelLoadError, ModelPool

    folder, marker = tmp_path / "evil-model", tmp_path / "UNPICKLED"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ModelLoadError, match="policy.allow_pickle"):
        ModelPool(cache_dir=tmp_path / "cache").model(str(folder))
    assert not marker.exists()


# ---- prompt files are data -----------------------------------------------------------------------

def test_prompt_texts_are_never_interpreted(tiny_model, tmp_path):
    from rlaif.models import load_tokenizer

    path, texts, marker = hostile_file(tmp_path)
    prompts = load_prompts(str(path), template="Review: {text} (continue)", system="Be brief.", num_train=4,
                           num_eval=2)
    assert sorted(p.text for p in prompts) == sorted(texts)
    for p in prompts:
        assert p.messages == [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": f"Review: {p.text} (continue)"}]
    tok = load_tokenizer(tiny_model)
    for p in prompts:  # the chat template (Jinja) inserts the text; it does not render it
        rendered = tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
        assert f"Review: {p.text} (continue)" in rendered
    cut, n = truncate_prompts(prompts, tok, 60, "left", "Review: {text} (continue)")
    assert n > 0 and all(c.messages[-1]["content"] == f"Review: {c.text} (continue)" for c in cut)
    assert not marker.exists()
