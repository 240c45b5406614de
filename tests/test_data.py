"""Prompt files: the bundled set, the train/eval split, templates, and errors that name file and line."""

from __future__ import annotations

import json

import pytest

from rlaif.data import PromptFileError, load_prompts, read_prompt_file, resolve_path

BUILTIN = "builtin:sentiment/movie_openings.jsonl"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def ten_prompts(tmp_path):
    return _write_jsonl(tmp_path / "ten.jsonl", [{"id": f"p{i}", "text": f"prompt number {i}"} for i in range(10)])


# ---- the bundled prompt set -------------------------------------------------------------------

def test_builtin_prompt_set_is_large_enough_with_unique_ids():
    assert resolve_path(BUILTIN).is_file()
    items = read_prompt_file(BUILTIN)
    ids = [pid for pid, _, _ in items]
    assert len(items) >= 120
    assert len(set(ids)) == len(ids)
    assert all(text.strip() for _, text, _ in items)


def test_builtin_set_covers_the_default_config_split():
    prompts = load_prompts(BUILTIN, num_train=96, num_eval=32, split_seed=0)
    assert sum(p.split == "train" for p in prompts) == 96
    assert sum(p.split == "eval" for p in prompts) == 32


# ---- split ------------------------------------------------------------------------------------

def test_split_sizes_and_disjoint(ten_prompts):
    prompts = load_prompts(ten_prompts, num_train=6, num_eval=3, split_seed=0)
    train = [p.id for p in prompts if p.split == "train"]
    evl = [p.id for p in prompts if p.split == "eval"]
    assert len(train) == 6
    assert len(evl) == 3
    assert not set(train) & set(evl)
    assert len(set(train)) == 6 and len(set(evl)) == 3
    assert {p.split for p in prompts} == {"train", "eval"}


def test_split_without_num_train_uses_all_remaining(ten_prompts):
    prompts = load_prompts(ten_prompts, num_train=None, num_eval=4, split_seed=1)
    assert sum(p.split == "eval" for p in prompts) == 4
    assert sum(p.split == "train" for p in prompts) == 6
    assert {p.id for p in prompts} == {f"p{i}" for i in range(10)}


def test_split_is_deterministic_for_a_seed_and_changes_with_the_seed(ten_prompts):
    def split(seed):
        ps = load_prompts(ten_prompts, num_train=5, num_eval=5, split_seed=seed)
        return [(p.id, p.split) for p in ps]

    assert split(0) == split(0)
    assert split(3) == split(3)
    assert split(0) != split(1)
    evals = {frozenset(pid for pid, s in split(seed) if s == "eval") for seed in range(5)}
    assert len(evals) > 1  # different seeds give different eval sets, not only a different order


def test_template_and_system_go_into_messages(ten_prompts):
    prompts = load_prompts(ten_prompts, template="Continue: {text} !", num_train=2, num_eval=1)
    for p in prompts:
        assert p.messages == [{"role": "user", "content": f"Continue: {p.text} !"}]
        assert p.text.startswith("prompt number ")
        assert p.source.startswith(ten_prompts + ":")
    with_system = load_prompts(ten_prompts, template="{text}", system="Be kind.", num_train=2, num_eval=1)
    for p in with_system:
        assert p.messages == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": p.text}]


def test_text_field_option(tmp_path):
    path = _write_jsonl(tmp_path / "r.jsonl", [{"review": "first"}, {"review": "second"}])
    prompts = load_prompts(path, num_train=1, num_eval=1, text_field="review")
    assert sorted(p.text for p in prompts) == ["first", "second"]
    # ids default to <stem>-<line>
    assert sorted(p.id for p in prompts) == ["r-1", "r-2"]


# ---- bad input ----------------------------------------------------------------------------------

def test_empty_file_names_the_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PromptFileError, match="empty") as e:
        read_prompt_file(str(path))
    assert str(path) in str(e.value)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(PromptFileError, match="does not exist") as e:
        load_prompts(str(path))
    assert str(path) in str(e.value)


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "three"\n{"text": "four"}\n', encoding="utf-8")
    with pytest.raises(PromptFileError) as e:
        read_prompt_file(str(path))
    assert f"{path}:3" in str(e.value)
    assert "malformed JSON" in str(e.value)


def test_non_object_line_names_the_line(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "one"}\n["text", "two"]\n', encoding="utf-8")
    with pytest.raises(PromptFileError) as e:
        read_prompt_file(str(path))
    assert f"{path}:2" in str(e.value)


@pytest.mark.parametrize("row", [{"id": "x"}, {"text": ""}, {"text": "   "}, {"text": 5}])
def test_missing_or_empty_text_field_names_the_line(tmp_path, row):
    path = tmp_path / "notext.jsonl"
    path.write_text('{"text": "fine"}\n\n' + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(PromptFileError) as e:
        read_prompt_file(str(path))
    assert f"{path}:3" in str(e.value)
    assert "'text'" in str(e.value)


def test_non_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"text": "ok"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(PromptFileError, match="UTF-8") as e:
        read_prompt_file(str(path))
    assert str(path) in str(e.value)
    assert f"{path}:2" in str(e.value)


def test_duplicate_ids_are_rejected(tmp_path):
    path = _write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"},
                                                 {"id": "a", "text": "z"}])
    with pytest.raises(PromptFileError, match="duplicate prompt id 'a'") as e:
        read_prompt_file(path)
    msg = str(e.value)
    assert f"{path}:3" in msg and f"{path}:1" in msg  # the duplicate and the first occurrence


def test_asking_for_more_prompts_than_exist(ten_prompts):
    with pytest.raises(PromptFileError) as e:
        load_prompts(ten_prompts, num_train=8, num_eval=3)
    msg = str(e.value)
    assert "has 10 prompts" in msg and "= 11" in msg
    assert "num_train" in msg and "num_eval" in msg
    # the exact total is fine
    assert len(load_prompts(ten_prompts, num_train=7, num_eval=3)) == 10


# ---- text files ---------------------------------------------------------------------------------

def test_txt_file_one_prompt_per_line(tmp_path):
    path = tmp_path / "openings.txt"
    path.write_text("First opening\n\n  Second opening  \nThird {not json}\n", encoding="utf-8")
    items = read_prompt_file(str(path))
    assert [text for _, text, _ in items] == ["First opening", "Second opening", "Third {not json}"]
    assert [pid for pid, _, _ in items] == ["openings-1", "openings-3", "openings-4"]
    assert [src for _, _, src in items] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    prompts = load_prompts(str(path), template="Say: {text}", num_train=2, num_eval=1)
    assert sorted(p.messages[-1]["content"] for p in prompts) == [
        "Say: First opening", "Say: Second opening", "Say: Third {not json}"]
