"""What each stage does with bad input: prompt files (empty, malformed, huge, not UTF-8, absurd
lines, duplicates, missing columns), prompts longer than the context, bad configs, misbehaving API
servers, a non-finite DPO loss, and a disk that fills up during a write.

Everything is real: files on disk, the tiny model's tokenizer, HTTP servers on 127.0.0.1, TRL's
DPO trainer, and writes that fail because a file-size limit or a tiny tmpfs is full.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest
from conftest import compose_config
from test_api import CHAT, backend, completion, ok, serving

import rlaif
from rlaif.data import (
    PromptFileError,
    load_prompts,
    load_prompts_with_stats,
    prompt_token_limit,
    read_prompt_file,
    require_columns,
    truncate_prompts,
)
from rlaif.types import Prompt

REPO = Path(rlaif.__file__).resolve().parent.parent


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ---- empty, malformed, non-UTF-8 ------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"\n\n   \n\t\n", b"\xef\xbb\xbf\n"], ids=["zero-bytes", "blank-lines", "bom-only"])
def test_empty_prompt_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(PromptFileError, match="the prompt file is empty") as e:
        load_prompts(str(path), num_train=1, num_eval=1)
    assert str(path) in str(e.value)


def test_folder_instead_of_a_file(tmp_path):
    with pytest.raises(PromptFileError, match="is a folder"):
        load_prompts(str(tmp_path), num_train=1)


@pytest.mark.parametrize(("line", "expected"), [
    ('{"text": "unterminated', "malformed JSON"),
    ('[{"text": "a"}, {"text": "b"}]', "got a list (a prompt file is JSON Lines: one object per line, not a JSON array)"),
    ('[{"text": "a"},', "malformed JSON"),
    ('"just a string"', "expected a JSON object with a 'text' field, got a string"),
    ('{"text": ["a", "list"]}', "the 'text' field is a list, not a string"),
    ('{"text": null}', "the 'text' field is null, not a string"),
    ('{"text": "ok", "id": {"nested": 1}}', "'id' must be a string or an integer, got an object"),
], ids=["unterminated", "json-array", "pretty-printed-array", "string-row", "list-text", "null-text", "object-id"])
def test_malformed_line_names_file_line_and_problem(tmp_path, line, expected):
    path = tmp_path / "bad.json"
    path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(PromptFileError) as e:
        load_prompts(str(path), num_train=1)
    assert f"{path}:2: " in str(e.value)
    assert expected in str(e.value)


def test_malformed_line_far_beyond_the_prompts_used_is_still_reported(tmp_path):
    """Every line is validated, not only the ones a run draws: a broken file never half-loads."""
    rows = [json.dumps({"text": f"prompt {i}"}) for i in range(5000)] + ["{oops"]
    path = tmp_path / "late.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match=f"{path}:5001: malformed JSON"):
        load_prompts(str(path), num_train=2, num_eval=1)


def test_non_utf8_reports_line_and_byte(tmp_path):
    path = tmp_path / "cp1252.txt"
    path.write_bytes("first prompt\nsecond \u201cquoted\u201d prompt\n".encode("cp1252"))
    with pytest.raises(PromptFileError) as e:
        read_prompt_file(str(path))
    msg = str(e.value)
    assert f"{path}:2: not valid UTF-8" in msg and "byte 20 of the file" in msg and "iconv" in msg


def test_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "utf16.jsonl"
    path.write_text('{"text": "hello"}\n', encoding="utf-16")
    with pytest.raises(PromptFileError, match="UTF-16"):
        read_prompt_file(str(path))


def test_compressed_file_is_not_utf8(tmp_path):
    path = tmp_path / "prompts.jsonl"  # a gzip saved under the plain name
    path.write_bytes(gzip.compress(b'{"text": "hello"}\n' * 50))
    with pytest.raises(PromptFileError, match="not valid UTF-8.*decompress"):
        read_prompt_file(str(path))


def test_utf8_bom_crlf_and_unicode_line_separators_are_fine(tmp_path):
    path = tmp_path / "windows.jsonl"
    rows = [json.dumps({"text": "caf\u00e9 \u2028 line-separator inside"}, ensure_ascii=False), json.dumps({"text": "two"})]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode("utf-8") + b"\r\n")
    items = read_prompt_file(str(path))
    assert [t for _, t, _ in items] == ["caf\u00e9 \u2028 line-separator inside", "two"]
    assert [w for _, _, w in items] == [f"{path}:1", f"{path}:2"]


# ---- huge files and absurd lines ----------------------------------------------------------------

LOAD_AND_MEASURE = """
import json, resource, sys
from rlaif.data import load_prompts_with_stats
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prompts, stats = load_prompts_with_stats(sys.argv[1], num_train=96, num_eval=32, split_seed=3)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mib": (after - before) / 1024, "stats": stats,
                  "prompts": [[p.id, p.split, len(p.text)] for p in prompts]}))
"""


def test_huge_file_streams_with_bounded_memory(tmp_path):
    """200k prompts, ~100 MB: the process grows by a fraction of the file (its speed is the benchmark's)."""
    path = tmp_path / "huge.jsonl"
    pad = "lorem ipsum dolor sit amet " * 17
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": f"q{i}", "text": f"prompt {i} {pad}"}) + "\n" for i in range(200_000))
    size_mib = path.stat().st_size / 2**20
    assert size_mib > 90
    res = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["stats"] == {"data/prompts_in_file": 200_000, "data/duplicates_dropped": 0}
    assert len(out["prompts"]) == 128 and sum(s == "eval" for _, s, _ in out["prompts"]) == 32
    assert len({pid for pid, _, _ in out["prompts"]}) == 128
    # reading it whole would need >= 2x the file (bytes + str); streaming keeps ~40 bytes per line
    assert out["grew_mib"] < size_mib / 3, out["grew_mib"]


def test_huge_file_split_matches_reading_everything(tmp_path):
    """The streamed split is the same shuffle as over an in-memory list of every prompt."""
    import random

    path = tmp_path / "mid.txt"
    path.write_text("".join(f"prompt {i}\n" for i in range(3000)), encoding="utf-8")
    prompts = load_prompts(str(path), num_train=50, num_eval=20, split_seed=11)
    order = list(range(3000))
    random.Random(11).shuffle(order)
    assert [p.text for p in prompts] == ([f"prompt {i}" for i in sorted(order[:20])]
                                         + [f"prompt {i}" for i in sorted(order[20:70])])


def test_absurdly_long_line_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "blob.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "a normal prompt"}\n{"text": "')
        chunk = b"x" * 2**20
        for _ in range(50):  # a 50 MB line
            f.write(chunk)
        f.write(b'"}\n{"text": "after"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(PromptFileError) as e:
            load_prompts(str(path), num_train=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(e.value)
    assert f"{path}:2: line is longer than 1,048,576 bytes (data.max_line_bytes)" in msg
    assert "data.max_prompt_tokens" in msg and "data.truncation" in msg
    assert peak < 8 * 2**20  # at most one line's limit was read, not the 50 MB
    # a larger limit is a choice the user can make
    items = read_prompt_file(str(path), max_line_bytes=64 * 2**20)
    assert len(items) == 3 and len(items[1][1]) == 50 * 2**20


# ---- prompts longer than the context ------------------------------------------------------------

TEMPLATE = "Continue this movie review: {text}"


@pytest.fixture(scope="module")
def tok(tiny_model):
    from rlaif.models import load_tokenizer

    return load_tokenizer(tiny_model)


def n_tokens(tok, prompt: Prompt) -> int:
    from rlaif.scoring import chat_prefix_ids

    return len(chat_prefix_ids(tok, prompt.messages))


def make_prompts(texts: list[str], system: str | None = None, template: str = TEMPLATE) -> list[Prompt]:
    return [Prompt(f"p{i}", t, ([{"role": "system", "content": system}] if system else [])
                   + [{"role": "user", "content": template.format(text=t)}], "train", f"file.jsonl:{i + 1}")
            for i, t in enumerate(texts)]


LONG = " ".join(f"The film's scene {i} is wonderful, moving and beautifully acted." for i in range(40))


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_fits_the_limit_and_keeps_the_template(tok, side, caplog):
    prompts = make_prompts(["A short one.", LONG, LONG + " THE END"], system="Be kind.")
    limit = 60
    assert n_tokens(tok, prompts[0]) <= limit < n_tokens(tok, prompts[1])
    with caplog.at_level(logging.WARNING, logger="rlaif"):
        out, count = truncate_prompts(prompts, tok, limit, side, TEMPLATE)
    assert count == 2
    assert out[0] is prompts[0]  # under the limit: untouched
    for before, after in zip(prompts[1:], out[1:], strict=True):
        assert limit - 8 <= n_tokens(tok, after) <= limit  # fits, and not cut far more than needed
        assert after.messages[0] == {"role": "system", "content": "Be kind."}
        assert after.messages[-1]["content"] == TEMPLATE.format(text=after.text)  # the instruction survives
        assert after.text and len(after.text) < len(before.text)
        assert after.id == before.id and after.source == before.source and after.split == before.split
        if side == "left":
            assert before.text.endswith(after.text)
        else:
            assert before.text.startswith(after.text)
    assert out[2].text.endswith(" THE END") == (side == "left")
    assert prompts[1].text == LONG  # the input list is not modified
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"cut 2 of 3 prompts to data.max_prompt_tokens={limit}" in warnings[0]
    assert "file.jsonl:2" in warnings[0] and f"data.truncation={side}" in warnings[0]


def test_truncation_of_multibyte_text_keeps_whole_characters(tok):
    text = "Ein Film \u00fcber \u00c4rger, \u6620\u753b\u3068\u97f3\u697d \U0001f3ac, " * 30
    out, count = truncate_prompts(make_prompts([text]), tok, 40, "left", TEMPLATE)
    assert count == 1 and n_tokens(tok, out[0]) <= 40
    assert text.endswith(out[0].text)
    out[0].text.encode("utf-8")  # a valid string, no half characters


def test_truncation_error_mode_lists_the_long_prompts(tok):
    prompts = make_prompts(["short", LONG, LONG])
    with pytest.raises(PromptFileError) as e:
        truncate_prompts(prompts, tok, 60, "error", TEMPLATE)
    msg = str(e.value)
    assert "2 of 3 prompts are longer than data.max_prompt_tokens=60" in msg
    assert "file.jsonl:2" in msg and "file.jsonl:3" in msg and "file.jsonl:1" not in msg
    assert "data.truncation=left" in msg


def test_truncation_limit_too_small_for_the_template(tok):
    with pytest.raises(PromptFileError, match="leaves no room for the text"):
        truncate_prompts(make_prompts([LONG], system="A long system message " * 10), tok, 30, "left", TEMPLATE)


def test_truncation_off_and_bad_side(tok):
    prompts = make_prompts([LONG])
    assert truncate_prompts(prompts, tok, None, "left", TEMPLATE) == (prompts, 0)
    with pytest.raises(ValueError, match="data.truncation must be one of left, right, error"):
        truncate_prompts(prompts, tok, 60, "middle", TEMPLATE)


def test_default_limit_is_the_model_context_minus_the_response(tiny_model, tmp_path):
    assert prompt_token_limit(None, tiny_model, 8) == 512 - 8  # the tiny model's max_position_embeddings
    assert prompt_token_limit(100, tiny_model, 8) == 100
    assert prompt_token_limit(None, tmp_path, 8) is None  # no config.json: no limit known
    with pytest.raises(PromptFileError, match="leaves no room for a prompt"):
        prompt_token_limit(None, tiny_model, 512)


# ---- duplicates ----------------------------------------------------------------------------------

def test_duplicate_texts_are_dropped_with_a_warning_and_a_count(tmp_path, caplog):
    rows = [{"text": f"prompt {i}"} for i in range(8)] + [{"text": "prompt 3"}, {"text": "  prompt 5 "},
                                                          {"text": "prompt 3"}]
    path = write_jsonl(tmp_path / "dups.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="rlaif"):
        prompts, stats = load_prompts_with_stats(path, num_train=5, num_eval=3)
    assert stats == {"data/prompts_in_file": 11, "data/duplicates_dropped": 3}
    texts = [p.text for p in prompts]
    assert sorted(texts) == [f"prompt {i}" for i in range(8)]  # all 8 distinct texts, each once
    assert not {p.text for p in prompts if p.split == "train"} & {p.text for p in prompts if p.split == "eval"}
    assert {p.source for p in prompts if p.text == "prompt 3"} == {f"{path}:4"}  # the first occurrence is kept
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "dropped 3 of 11 prompts" in msg and "line 9 repeats line 4" in msg and "data.duplicates" in msg
    with pytest.raises(PromptFileError, match=r"has 8 prompts after dropping 3 duplicate texts .* = 9"):
        load_prompts(path, num_train=6, num_eval=3)


def test_duplicate_texts_error_or_keep(tmp_path):
    path = write_jsonl(tmp_path / "dups.jsonl", [{"text": "a"}, {"text": "b"}, {"text": "a"}])
    with pytest.raises(PromptFileError, match=r"1 prompts repeat the text of an earlier line \(line 3 repeats line 1\)"):
        load_prompts(path, num_train=1, duplicates="error")
    prompts, stats = load_prompts_with_stats(path, num_train=3, duplicates="keep")
    assert sorted(p.text for p in prompts) == ["a", "a", "b"] and stats["data/duplicates_dropped"] == 0
    with pytest.raises(ValueError, match="duplicates must be one of drop, error, keep"):
        load_prompts(path, num_train=1, duplicates="sometimes")


def test_repeated_rows_are_duplicates_but_reused_ids_with_new_text_are_errors(tmp_path):
    same_row = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"},
                                                     {"id": "a", "text": "x"}])  # a file concatenated twice
    assert [pid for pid, _, _ in read_prompt_file(same_row)] == ["a", "b"]
    clash = write_jsonl(tmp_path / "clash.jsonl", [{"id": "a", "text": "x"}, {"text": "y"}, {"id": "clash-2", "text": "z"}])
    with pytest.raises(PromptFileError, match=f"{clash}:3: duplicate prompt id 'clash-2' \\(first at {clash}:2\\)"):
        read_prompt_file(clash)  # an explicit id equal to another line's default id


# ---- missing columns -------------------------------------------------------------------------------

def test_jsonl_without_the_text_field_lists_its_fields(tmp_path):
    path = write_jsonl(tmp_path / "reviews.jsonl", [{"id": 1, "review": "great", "stars": 5}])
    with pytest.raises(PromptFileError) as e:
        load_prompts(path, num_train=1)
    msg = str(e.value)
    assert f"{path}:1: no 'text' field (data.text_field=text)" in msg
    assert "fields are: id, review, stars" in msg and "data.text_field" in msg
    assert [p.text for p in load_prompts(path, num_train=1, text_field="review")] == ["great"]


def test_dataset_mapping_with_a_missing_column(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list([{"question": "q", "good": "a", "bad": "b"}])
    require_columns(ds.column_names, {"prompt": "question", "chosen": "good", "rejected": "bad"}, "x", "fields")
    with pytest.raises(PromptFileError) as e:
        require_columns(ds.column_names, {"prompt": "prompt", "chosen": "good", "rejected": "rejected",
                                          "criterion": None}, "dataset org/pairs (split train)", "audit.data.fields")
    msg = str(e.value)
    assert "dataset org/pairs (split train) has no column 'prompt' (for prompt), 'rejected' (for rejected)" in msg
    assert "its columns are: question, good, bad" in msg and "audit.data.fields" in msg


def test_audit_hub_style_dataset_with_a_missing_column(tmp_path):
    """A dataset loaded with ``datasets`` (a local folder here, a hub id in real use) whose columns do
    not match the mapping: the error names the column, the dataset and the columns it has."""
    from rlaif.audit import load_labelled_pairs

    folder = tmp_path / "my-pairs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"question": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(PromptFileError) as e:
        load_labelled_pairs({"hf_dataset": str(folder), "mapping": "reward_bench", "split": "train"})
    msg = str(e.value)
    assert "'prompt' (for prompt)" in msg and str(folder) in msg and "question, chosen, rejected" in msg
    rows = load_labelled_pairs({"hf_dataset": str(folder), "mapping": "reward_bench", "split": "train",
                                "fields": {"prompt": "question"}})
    assert rows[0]["prompt"] == "q"


def test_labelled_pair_file_with_a_missing_column(tmp_path):
    from rlaif.audit import load_labelled_pairs

    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                  {"prompt": "p", "good": "a", "rejected": "b"}])
    with pytest.raises(PromptFileError) as e:
        load_labelled_pairs({"path": path})
    msg = str(e.value)
    assert f"{path}:2" in msg and "'chosen'" in msg and "prompt, good, rejected" in msg


# ---- configs: what tests/test_configs.py does not already cover ----------------------------------------

@pytest.mark.parametrize(("overrides", "key"), [
    (["optimizer.lora.enabled=maybe"], "optimizer.lora.enabled"),
    (["optimizer.batch_size=2.5"], "optimizer.batch_size"),
    (["optimizer.learning_rate=fast"], "optimizer.learning_rate"),
    (["optimizer=self_rewarding", "optimizer.dpo.beta=abc"], "optimizer.dpo.beta"),
    (["optimizer=ppo", "optimizer.gamma=1.5"], "optimizer.gamma"),
    (["generator.max_new_tokens=ten"], "generator.max_new_tokens"),
    (["judge=pairwise", "judge.batch_size=0"], "judge.batch_size"),
    (["data.truncation=middle"], "data.truncation"),
    (["data.duplicates=sometimes"], "data.duplicates"),
    (["data.max_prompt_tokens=0"], "data.max_prompt_tokens"),
    (["data.max_line_bytes=-1"], "data.max_line_bytes"),
    (["policy.allow_pickle=maybe"], "policy.allow_pickle"),
    (["optimizer.loss_type=hinge", "optimizer.label_smoothing=0.1"], "optimizer.label_smoothing"),
])
def test_wrong_types_and_impossible_combinations_name_the_key(overrides, key):
    from rlaif.config import ConfigError, validate

    with pytest.raises(ConfigError) as e:
        validate(compose_config(overrides))
    assert f"{key}:" in str(e.value)


def test_new_data_keys_have_sensible_defaults():
    from rlaif.config import validate

    cfg = compose_config([])
    validate(cfg)
    assert cfg.data.truncation == "left" and cfg.data.duplicates == "drop"
    assert cfg.data.max_prompt_tokens is None and cfg.data.max_line_bytes == 2**20
    assert cfg.policy.trust_remote_code is False and cfg.policy.allow_pickle is False


@pytest.mark.parametrize(("override", "suggestion"), [("optimizer.lora.enable=true", "'enabled'"),
                                                      ("data.text_fields=review", "'text_field'"),
                                                      ("data.truncate=left", "'truncation'")])
def test_unknown_nested_key_suggests_the_close_one(override, suggestion):
    from rlaif.config import ConfigError, check_overrides

    with pytest.raises(ConfigError, match=f"Did you mean {suggestion}"):
        check_overrides([override])


# ---- API servers: what tests/test_api.py does not already cover -------------------------------------

class RawServer:
    """A TCP server on 127.0.0.1 that reads one HTTP request and answers with raw bytes (or nothing)."""

    def __init__(self, reply: bytes | None):
        self.hits = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer.hits += 1
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, body = data.split(b"\r\n\r\n", 1)
                length = next((int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")), 0)
                while len(body) < length:
                    body += self.request.recv(65536)
                if reply:
                    self.request.sendall(reply)
                self.request.shutdown(socket.SHUT_RDWR)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("reply", [
    None,
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"choices\": [",
    b"this is not http at all\r\n\r\n",
], ids=["closes-without-answer", "truncated-body", "not-http"])
def test_server_that_hangs_up_or_speaks_garbage_is_a_counted_failure(reply):
    with RawServer(reply) as s:
        b = backend(s.url, max_retries=1)
        assert b.generate([CHAT]) == [None]
        assert b.next_token_logprobs([CHAT], ["1", "2"]) == [[None, None]]
    assert s.hits == 4  # each request retried once: transport errors may be transient
    acc = b.accounting()
    assert acc["failures"] == 2 and acc["retries"] == 2
    assert b.client.failure_reasons == {"connection error": 2}


@pytest.mark.parametrize("logprob", ["oops", None, 3.5, float("nan")], ids=["string", "null", "positive", "nan"])
def test_garbage_logprob_values_are_a_counted_failure(logprob):
    """A log-probability must be a number <= 0; anything else means the server is broken: the
    request counts as failed (None), it neither crashes the judge nor becomes a label."""
    body = completion("1", top=[("1", -0.1), ("2", -2.0)])
    body["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["logprob"] = logprob
    payload = json.dumps(body).encode()  # NaN goes out as the bare token NaN, as some servers write it
    with serving(lambda b, h, n: (200, {"Content-Type": "application/json"}, payload)) as s:
        b = backend(s.url)
        assert b.next_token_logprobs([CHAT, CHAT], ["1", "2"]) == [[None, None], [None, None]]
    assert b.accounting()["failures"] == 2
    assert b.client.failure_reasons == {"malformed response": 2}
    assert "log-prob" in b.client.recent_errors[-1]


def test_server_that_goes_down_during_a_run():
    """The first answers arrive; then the server goes away: later requests are None, counted."""
    with serving(lambda body, h, n: ok(completion(f"answer {n}"))) as s:
        b = backend(s.url, max_concurrency=1, max_retries=1)
        assert b.generate([CHAT, CHAT]) == ["answer 0", "answer 1"]
    # the same client, its server shut down (nothing listens on that port any more)
    assert b.generate([CHAT, CHAT]) == [None, None]
    acc = b.accounting()
    assert (acc["requests"], acc["failures"], acc["retries"]) == (4, 2, 2)
    assert b.client.failure_reasons == {"connection error": 2}


# ---- a non-finite DPO loss -------------------------------------------------------------------------

def test_dpo_non_finite_loss_stops_with_a_clear_error(tiny_model, tmp_path):
    from rlaif.optimizers.base import NonFiniteLossError, TrainContext
    from rlaif.optimizers.dpo import DPOOptimizer
    from rlaif.types import PreferencePair

    pairs = [PreferencePair([{"role": "user", "content": f"Continue: the film {i} was"}],
                            [{"role": "assistant", "content": "wonderful and moving"}],
                            [{"role": "assistant", "content": "dull and boring"}], f"p{i}", 0, 1, 1.0, 0.0, 1.0,
                            "judge", "crit") for i in range(8)]
    ctx = TrainContext(policy_path=tiny_model, output_dir=tmp_path / "policy", seed=0, prompts=[], pairs=pairs)
    opt = DPOOptimizer(learning_rate=1e30, batch_size=2, epochs=1, max_length=64, max_grad_norm=0.0)
    with pytest.raises(NonFiniteLossError) as e:
        opt.train(ctx)
    msg = str(e.value)
    assert "DPO" in msg and "step" in msg and "optimizer.learning_rate" in msg
    assert "nan" in msg.lower() or "inf" in msg.lower()
    assert not (tmp_path / "policy" / "model.safetensors").exists()  # no broken policy saved
    assert all(r["train/step"] <= 3 for r in ctx.history)  # stopped at once, not after the epoch


# ---- a full disk during a write ---------------------------------------------------------------------

FILL_DISK = r"""
import json, os, resource, signal, sys
from pathlib import Path
from rlaif.cache import StageCache
from rlaif.io import DiskFullError, atomic_write_text, write_records

root, limit = Path(sys.argv[1]), int(sys.argv[2])
target = root / "summary.json"
atomic_write_text(target, "old\n")
cache = StageCache(root / "cache")
if limit:  # past this size a write fails with EFBIG (SIGXFSZ ignored, as it would kill the process)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
report = {}

def attempt(name, fn):
    try:
        fn()
        report[name] = "no error"
    except OSError as e:
        report[name] = {"type": type(e).__name__, "errno": e.errno, "message": str(e)}

attempt("write", lambda: atomic_write_text(target, "x" * 400_000))
report["target"] = target.read_text()
report["folder"] = sorted(p.name for p in root.iterdir())
attempt("put", lambda: cache.put("judge", "k1", lambda d: write_records(d / "judgments.jsonl", [{"t": "y" * 1000}] * 400)))
report["get"] = str(cache.get("judge", "k1"))
report["entries"] = sorted(os.listdir(root / "cache" / "stages" / "judge"))
attempt("put_raw", lambda: cache.put("train", "k2", lambda d: (d / "model.bin").write_bytes(b"0" * 400_000)))
report["get_raw"] = str(cache.get("train", "k2"))
report["entries_raw"] = sorted(os.listdir(root / "cache" / "stages" / "train"))
print(json.dumps(report))
"""


def _check_disk_full_report(report: dict, root: Path, code: int) -> None:
    write = report["write"]
    assert write["type"] == "DiskFullError" and write["errno"] == code
    assert write["message"].startswith(f"disk full: could not write {root / 'summary.json'}")
    assert "cache.dir=" in write["message"]
    assert report["target"] == "old\n"  # the old file is intact ...
    assert report["folder"] == ["summary.json"]  # ... and no temporary file is left
    for put, get, entries in (("put", "get", "entries"), ("put_raw", "get_raw", "entries_raw")):
        assert report[put]["errno"] == code and report[put]["type"] == "DiskFullError", report[put]
        assert report[put]["message"].startswith("disk full")
        assert report[get] == "None" and report[entries] == []  # no entry, complete or not
    assert "cache entry train/k2" in report["put_raw"]["message"]


def test_file_size_limit_during_writes(tmp_path):
    res = subprocess.run([sys.executable, "-c", FILL_DISK, str(tmp_path), str(64 * 1024)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-2000:]
    _check_disk_full_report(json.loads(res.stdout), tmp_path, errno.EFBIG)


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(sys.platform != "linux" or not _can_mount_tmpfs(),
                    reason="needs unprivileged user and mount namespaces to mount a small tmpfs")
def test_no_space_left_on_a_small_tmpfs(tmp_path):
    """A real full filesystem (ENOSPC): a 256 KiB tmpfs mounted in a private mount namespace."""
    root = tmp_path / "small"
    root.mkdir()
    script = 'mount -t tmpfs -o size=256k tmpfs "$1" && exec "$2" -c "$3" "$1" 0'
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(root), sys.executable, FILL_DISK],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-2000:]
    _check_disk_full_report(json.loads(res.stdout), root, errno.ENOSPC)
