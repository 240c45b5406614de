"""StageCache (keys, atomic entries, concurrency) and rlaif.io (records round trip, JSONL errors)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from rlaif.cache import StageCache, stable_hash
from rlaif.io import atomic_write_text, read_jsonl, read_records, write_json, write_records
from rlaif.types import Candidate, EvalSample, Judgment, PairwiseVerdict, PreferencePair, Prompt

BASE = {"model": "local:/m:abc", "sampling": {"temperature": 1.0, "top_p": 0.9}, "seed": 0, "prompts": "h1", "k": 4}


# ---- keys -------------------------------------------------------------------------------------

def test_key_is_stable_for_equal_inputs(tmp_path):
    cache = StageCache(tmp_path)
    reordered = {"k": 4, "prompts": "h1", "seed": 0, "sampling": {"top_p": 0.9, "temperature": 1.0},
                 "model": "local:/m:abc"}
    assert cache.key("generate", BASE) == cache.key("generate", dict(BASE))
    assert cache.key("generate", BASE) == cache.key("generate", reordered)
    assert cache.key("generate", BASE) == StageCache(tmp_path / "other").key("generate", BASE)


@pytest.mark.parametrize("change", [
    ("model", "local:/m:abd"),
    ("seed", 1),
    ("k", 5),
    ("prompts", "h2"),
    ("sampling", {"temperature": 1.0, "top_p": 0.95}),
    ("sampling", {"temperature": 0.7, "top_p": 0.9}),
    ("extra", None),
])
def test_key_changes_with_any_input(tmp_path, change):
    cache = StageCache(tmp_path)
    name, value = change
    assert cache.key("generate", BASE) != cache.key("generate", {**BASE, name: value})


def test_key_changes_with_stage(tmp_path):
    cache = StageCache(tmp_path)
    assert cache.key("generate", BASE) != cache.key("judge", BASE)


def test_key_changes_with_stage_version(tmp_path, monkeypatch):
    import rlaif.cache

    cache = StageCache(tmp_path)
    before = cache.key("judge", BASE)
    monkeypatch.setitem(rlaif.cache.STAGE_VERSIONS, "judge", rlaif.cache.STAGE_VERSIONS["judge"] + 1)
    assert cache.key("judge", BASE) != before


def test_stable_hash_distinguishes_types():
    assert stable_hash({"a": 1}) != stable_hash({"a": "1"})
    assert stable_hash([1, 2]) != stable_hash([2, 1])


# ---- put / get --------------------------------------------------------------------------------

def _entries(cache: StageCache, stage: str) -> list[str]:
    folder = cache.root / "stages" / stage
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_put_get_round_trip(tmp_path):
    cache = StageCache(tmp_path)
    key = cache.key("generate", BASE)
    assert cache.get("generate", key) is None
    records = [Candidate("p", 0, "hello", 2, True, "m"), Candidate("p", 1, "bye", 3, False, "m")]
    final = cache.put("generate", key, lambda d: write_records(d / "candidates.jsonl", records))
    hit = cache.get("generate", key)
    assert hit == final
    assert read_records(hit / "candidates.jsonl", Candidate) == records
    assert (hit / "COMPLETE").exists()
    assert _entries(cache, "generate") == [key]
    # a different key is still a miss
    assert cache.get("generate", cache.key("generate", {**BASE, "seed": 9})) is None


def test_failed_build_leaves_no_entry(tmp_path):
    cache = StageCache(tmp_path)
    key = cache.key("judge", BASE)

    def build(d):
        (d / "judgments.jsonl").write_text("{}\n")
        raise RuntimeError("judge crashed")

    with pytest.raises(RuntimeError, match="judge crashed"):
        cache.put("judge", key, build)
    assert cache.get("judge", key) is None
    assert _entries(cache, "judge") == []  # no temp folder left behind either
    # a later successful build works
    cache.put("judge", key, lambda d: (d / "x.txt").write_text("ok"))
    assert (cache.get("judge", key) / "x.txt").read_text() == "ok"
    assert _entries(cache, "judge") == [key]


def test_keyboard_interrupt_in_build_leaves_no_entry(tmp_path):
    cache = StageCache(tmp_path)

    def build(d):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.put("train", "k1", build)
    assert cache.get("train", "k1") is None
    assert _entries(cache, "train") == []


def test_concurrent_puts_of_the_same_key(tmp_path):
    cache = StageCache(tmp_path)
    key = cache.key("generate", BASE)
    barrier = threading.Barrier(2)
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def build_for(n):
        def build(d):
            barrier.wait(timeout=10)  # both builds are in progress at the same time
            for i in range(20):
                (d / f"part{i}.txt").write_text(f"{i}\n")
            time.sleep(0.05 * n)
        return build

    def worker(n):
        try:
            results[n] = cache.put("generate", key, build_for(n))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert results[1] == results[2] == cache.path("generate", key)
    hit = cache.get("generate", key)
    assert hit is not None
    assert sorted(p.name for p in hit.iterdir()) == sorted(["COMPLETE"] + [f"part{i}.txt" for i in range(20)])
    assert all((hit / f"part{i}.txt").read_text() == f"{i}\n" for i in range(20))
    assert _entries(cache, "generate") == [key]


def test_disabled_cache_never_hits(tmp_path):
    cache = StageCache(tmp_path, enabled=False)
    assert not cache.enabled
    final = cache.put("generate", "k", lambda d: (d / "a.txt").write_text("a"))
    assert (final / "a.txt").read_text() == "a"  # still built, so callers have one code path
    assert cache.get("generate", "k") is None


def test_cache_without_root_is_disabled():
    cache = StageCache(None)
    assert not cache.enabled
    assert cache.get("generate", "k") is None
    final = cache.put("generate", "k", lambda d: (d / "a.txt").write_text("a"))
    assert (final / "a.txt").read_text() == "a"
    assert cache.get("generate", "k") is None


# ---- rlaif.io -------------------------------------------------------------------------------------

RECORDS = {
    Prompt: [Prompt("p1", "caf\u00e9 \u2014 text", [{"role": "user", "content": "x"}], "train", "f.jsonl:1"),
             Prompt("p2", "t", [{"role": "system", "content": "s"}, {"role": "user", "content": "y"}], "eval")],
    Candidate: [Candidate("p1", 0, "resp\nwith newline", 5, True, "local:/m"),
                Candidate("p1", 1, "", 0, False, "m", "reference")],
    Judgment: [Judgment("p1", 0, 0.25, "contrastive:m", "pos", {"note": [1, 2]}),
               Judgment("p1", 1, None, "contrastive:m", "pos", {"invalid": "score was nan"})],
    PairwiseVerdict: [PairwiseVerdict("p1", 0, 1, 0.75, 0.5, "pairwise:m", "pos"),
                      PairwiseVerdict("p1", 0, 2, None, 0.5, "pairwise:m", "pos")],
    PreferencePair: [PreferencePair([{"role": "user", "content": "x"}], [{"role": "assistant", "content": "a"}],
                                    [{"role": "assistant", "content": "b"}], "p1", 1, 0, 0.9, 0.1, 0.8, "j", "c"),
                     PreferencePair([{"role": "user", "content": "x"}], [{"role": "assistant", "content": "a"}],
                                    [{"role": "assistant", "content": "b"}], "p1", 1, 0, 0.9, 0.1, 0.8, "j", "c",
                                    0.6, 0.7)],
    EvalSample: [EvalSample("p1", "policy", 0, "t", 3, 0.5, 0.1, -4.5, -5.0),
                 EvalSample("p1", "reference", 0, "t", 3, None)],
}


def test_every_record_type_is_covered():
    import rlaif.types

    all_types = {obj for obj in vars(rlaif.types).values()
                 if isinstance(obj, type) and dataclasses.is_dataclass(obj) and issubclass(obj, rlaif.types.Record)}
    assert all_types == set(RECORDS)


@pytest.mark.parametrize("cls", list(RECORDS), ids=lambda c: c.__name__)
def test_write_read_records_round_trip(tmp_path, cls):
    path = tmp_path / "sub" / f"{cls.__name__}.jsonl"
    write_records(path, RECORDS[cls])
    back = read_records(path, cls)
    assert back == RECORDS[cls]
    assert all(type(r) is cls for r in back)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(RECORDS[cls])
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_read_records_ignores_unknown_columns(tmp_path):
    path = tmp_path / "c.jsonl"
    row = {**RECORDS[Candidate][0].to_dict(), "added_later": 1}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert read_records(path, Candidate) == [RECORDS[Candidate][0]]


def test_write_records_refuses_nan(tmp_path):
    path = tmp_path / "j.jsonl"
    with pytest.raises(ValueError):
        write_records(path, [Judgment("p", 0, float("nan"), "j", "c")])
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_read_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError) as e:
        read_jsonl(path)
    assert f"{path}:3" in str(e.value)


def test_read_jsonl_non_object_line(tmp_path):
    path = tmp_path / "arr.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError) as e:
        read_jsonl(path)
    assert f"{path}:2" in str(e.value)


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_atomic_write_and_write_json(tmp_path):
    path = tmp_path / "deep" / "f.json"
    write_json(path, {"b": 1, "a": [1.5, None]})
    assert json.loads(path.read_text()) == {"b": 1, "a": [1.5, None]}
    atomic_write_text(path, "replaced")
    assert path.read_text() == "replaced"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]
