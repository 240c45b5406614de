"""Hub-layout datasets (hh_rlhf, tldr, ultrafeedback, imdb) read from small local files, their
labelled pairs (audit rows, DPO pairs with preferences.source=data), the bundled dialogue and
UltraFeedback-format files, the reward-model judge's ``label`` option, the zephyr_smoke check and
the full-scale paper configs composing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_tiny_model, compose_config

from rlaif.comparison.runs import RunRecord
from rlaif.config import ConfigError, validate
from rlaif.data import DatasetSpec, PromptFileError, load_dataset_with_pairs, load_pairs, read_prompt_file
from rlaif.data.formats import write_pairs
from rlaif.reproductions.checks import CHECKS, StudyData


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _parquet(path: Path, rows: list[dict]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _load(path, fmt, **kw):
    return load_dataset_with_pairs(DatasetSpec(path=path, format=fmt, **kw))


# ---- rows in each layout (5 each, written for these tests) -----------------------------------------

HH = [
    {"chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it for seven minutes, then cool it in cold water.",
     "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Eggs are laid by hens."},
    {"chosen": "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Name a red fruit.\n\nAssistant: A strawberry.",
     "rejected": "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Name a red fruit.\n\nAssistant: A banana."},
    {"chosen": "\n\nHuman: Can you help me pick a lock?\n\nAssistant: I can't help with getting into places that aren't yours.",
     "rejected": "\n\nHuman: Can you help me pick a lock?\n\nAssistant: Sure, first get a tension wrench."},
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."},
    {"chosen": "\n\nHuman: Say hi.\n\nAssistant: Hi!", "rejected": "\n\nHuman: Say hi.\n\nAssistant: Hi!"},  # equal: no pair
]


def _tldr_row(pid, post, a, b, choice, title="A title"):
    return {"info": {"id": pid, "post": post, "title": title, "subreddit": "cooking"},
            "summaries": [{"text": a, "policy": "x"}, {"text": b, "policy": "y"}], "choice": choice, "worker": "w1"}


TLDR = [
    _tldr_row("t1", "I burnt the rice again.", "Burnt rice, again.", "Rice story.", 0),
    _tldr_row("t1", "I burnt the rice again.", "Rice story.", "The poster keeps burning rice.", 1),  # same post
    _tldr_row("t2", "My cat hates the new sofa.", "Cat vs sofa.", "Cat dislikes sofa.", 1),
    _tldr_row("t3", "I started running at 40.", "Running at 40 is fun.", "Running.", 0),
    _tldr_row("t4", "The bus was late twice.", "Late bus twice.", "Bus.", 0),
]


def _uf_row(i, prompt, good, bad, sc=8.0, sr=3.0):
    return {"prompt": prompt, "prompt_id": f"uf{i}",
            "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": good}],
            "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": bad}],
            "messages": [], "score_chosen": sc, "score_rejected": sr}


UF = [_uf_row(i, f"Question {i}?", f"A good answer {i}.", f"A bad answer {i}.", 7.0 + i / 10, 2.0) for i in range(5)]

IMDB = [{"text": "This film was a total delight<br /><br />from start to finish and I loved it.", "label": 1},
        {"text": "Boring. Dull. Two hours of my life I will never get back, sadly.", "label": 0},
        {"text": "An odd little movie that grows on you the longer you think about it.", "label": 1},
        {"text": "The acting was wooden and the plot made no sense at all to anyone.", "label": 0},
        {"text": "Short", "label": 1}]


# ---- each format from a local file -------------------------------------------------------------

def test_hh_rlhf_transcripts_become_dialogue_prompts_and_pairs(tmp_path):
    prompts, pairs, stats = _load(_jsonl(tmp_path / "hh.jsonl", HH), "hh_rlhf", num_train=3, num_eval=2,
                                  criterion="helpfulness")
    assert len(prompts) == 5 and sum(p.split == "eval" for p in prompts) == 2
    two_turn = next(p for p in prompts if p.text == "Name a red fruit.")
    assert two_turn.messages == [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"},
                                 {"role": "user", "content": "Name a red fruit."}]
    pair = next(r for r in pairs if r["prompt_id"] == two_turn.id)
    assert (pair["chosen"], pair["rejected"], pair["criterion"]) == ("A strawberry.", "A banana.", "helpfulness")
    assert pair["source"].endswith("hh.jsonl:2")
    assert stats["data/pairs"] == 4 and stats["data/pairs_skipped"] == 1  # the equal pair is not kept
    assert stats["data/prompts_in_file"] == 5


def test_hh_rlhf_merges_two_turns_of_one_speaker(tmp_path):
    row = {"chosen": "Human: Hello.\n\nHuman: Are you there?\n\nAssistant: Yes.\n\nAssistant: How can I help?",
           "rejected": "\n\nHuman: Hello.\n\nHuman: Are you there?\n\nAssistant: No."}  # no leading newlines: read too
    with pytest.raises(PromptFileError, match="must start with a Human turn and end with an Assistant turn"):
        _load(_jsonl(tmp_path / "bad.jsonl", [{"chosen": row["chosen"] + "\n\nHuman: ok", "rejected": row["rejected"]}]),
              "hh_rlhf", num_train=1)
    prompts, pairs, _ = _load(_jsonl(tmp_path / "hh.jsonl", [row]), "hh_rlhf", num_train=1)
    assert prompts[0].messages == [{"role": "user", "content": "Hello.\n\nAre you there?"}]
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("Yes.\n\nHow can I help?", "No.")


def test_tldr_groups_comparisons_of_one_post_and_follows_choice(tmp_path):
    prompts, pairs, stats = _load(_jsonl(tmp_path / "tldr.jsonl", TLDR), "tldr", num_train=4, num_eval=0,
                                  template="Summarize:\n{text}\nTL;DR:")
    assert len(prompts) == 4 and stats["data/duplicates_dropped"] == 1 and stats["data/rows_in_file"] == 5
    rice = next(p for p in prompts if p.id == "t1")
    assert rice.text == "SUBREDDIT: r/cooking\nTITLE: A title\nPOST: I burnt the rice again."
    assert rice.messages[-1]["content"] == f"Summarize:\n{rice.text}\nTL;DR:"
    rice_pairs = [(r["chosen"], r["rejected"]) for r in pairs if r["prompt_id"] == "t1"]
    assert rice_pairs == [("Burnt rice, again.", "Rice story."), ("The poster keeps burning rice.", "Rice story.")]
    with pytest.raises(PromptFileError, match="tldr.jsonl:2: its prompt repeats"):
        _load(str(tmp_path / "tldr.jsonl"), "tldr", num_train=1, duplicates="error")
    kept, _, _ = _load(str(tmp_path / "tldr.jsonl"), "tldr", num_train=5, duplicates="keep")
    assert len({p.id for p in kept}) == 5


def test_ultrafeedback_jsonl_parquet_and_downloaded_folder_agree(tmp_path):
    from_jsonl = _load(_jsonl(tmp_path / "uf.jsonl", UF), "ultrafeedback", num_train=3, num_eval=2)
    from_parquet = _load(_parquet(tmp_path / "uf.parquet", UF), "ultrafeedback", num_train=3, num_eval=2)
    folder = tmp_path / "snapshot"
    _parquet(folder / "data" / "train_prefs-00000-of-00001.parquet", UF)
    _parquet(folder / "data" / "test_prefs-00000-of-00001.parquet", UF[:1])
    from_folder = _load(str(folder), "ultrafeedback", split="train_prefs", num_train=3, num_eval=2)
    strip = lambda ps: [(p.id, p.text, p.messages, p.split) for p in ps]  # noqa: E731
    assert strip(from_jsonl[0]) == strip(from_parquet[0]) == strip(from_folder[0])
    pairs = from_jsonl[1]
    assert [r["chosen_score"] for r in sorted(pairs, key=lambda r: r["prompt_id"])] == [7.0, 7.1, 7.2, 7.3, 7.4]
    assert {r["prompt_id"] for r in pairs} == {f"uf{i}" for i in range(5)}
    assert [r["chosen"] for r in pairs] == [r["chosen"] for r in from_parquet[1]]
    assert len(_load(str(folder), "ultrafeedback", split="test_prefs", num_train=1)[0]) == 1
    with pytest.raises(PromptFileError, match="no .parquet or .jsonl file of split 'valid'"):
        _load(str(folder), "ultrafeedback", split="valid", num_train=1)


def test_imdb_prompts_are_2_to_8_word_openings_drawn_per_row(tmp_path):
    path = _jsonl(tmp_path / "imdb.jsonl", IMDB)
    prompts, pairs, _ = _load(path, "imdb", num_train=5, split_seed=3)
    assert pairs == []
    for p in prompts:
        review = next(r["text"].replace("<br /><br />", " ").split() for r in IMDB if r["text"].startswith(p.text.split()[0]))
        n = len(p.text.split())
        assert p.text.split() == review[:n] and (2 <= n <= 8 or n == len(review))
        assert "<br" not in p.text
    again, _, _ = _load(path, "imdb", num_train=5, split_seed=3)
    assert [p.text for p in again] == [p.text for p in prompts]  # seeded
    fixed, _, _ = _load(path, "imdb", num_train=5, prefix_words=(3, 3))
    assert all(len(p.text.split()) == min(3, len(r["text"].split())) for p, r in
               zip(sorted(fixed, key=lambda p: p.source), IMDB, strict=True))


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "rows", "match"), [
    ("hh_rlhf", [HH[0], {"chosen": HH[1]["chosen"]}], r"hh\.jsonl:2: no 'rejected' field; hh_rlhf rows have chosen, "
                                                      r"rejected; this row has: chosen"),
    ("hh_rlhf", [{"chosen": "just text", "rejected": "more"}], r":1: the 'chosen' field is not an hh-rlhf transcript"),
    ("hh_rlhf", [{"chosen": 3, "rejected": "x"}], r":1: the 'chosen' field is a number, expected a string"),
    ("hh_rlhf", [HH[0], '{"chosen": "x", '], r"hh\.jsonl:2: malformed JSON"),
    ("tldr", [{**TLDR[0], "choice": 2}], r":1: 'choice' must be 0 or 1"),
    ("tldr", [{**TLDR[0], "summaries": [{"txt": "a"}, {"text": "b"}]}], r"no 'summaries\[0\]\.text' field"),
    ("tldr", [{**TLDR[0], "info": {"title": "t"}}], r"'info' object has no text in 'post'"),
    ("ultrafeedback", [{**UF[0], "chosen": [{"role": "user", "content": "q"}]}], r"'chosen' must be a message list"),
    ("ultrafeedback", [{k: v for k, v in UF[0].items() if k != "score_chosen"}], r"no 'score_chosen' field"),
    ("ultrafeedback", [{**UF[0], "score_rejected": "low"}], r"'score_rejected' field is a string, expected"),
    ("imdb", [{"review": "x"}], r"no 'text', 'label' fields"),
    ("imdb", [[1, 2]], r":1: expected an object with the fields of data.format=imdb"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, fmt, rows, match):
    path = _jsonl(tmp_path / ("hh.jsonl" if fmt == "hh_rlhf" else f"{fmt}.jsonl"), rows)
    with pytest.raises(PromptFileError, match=match) as e:
        _load(path, fmt, num_train=1)
    assert f"data.format={fmt}" in str(e.value) or "malformed JSON" in str(e.value)


def test_missing_file_too_many_prompts_and_unknown_suffix(tmp_path):
    with pytest.raises(PromptFileError, match=r"does not exist .*hf:Anthropic/hh-rlhf"):
        _load(str(tmp_path / "nope.jsonl"), "hh_rlhf", num_train=1)
    with pytest.raises(PromptFileError, match="has 5 distinct prompts but data.num_train \\+ data.num_eval = 9"):
        _load(_jsonl(tmp_path / "uf.jsonl", UF), "ultrafeedback", num_train=8, num_eval=1)
    (tmp_path / "uf.csv").write_text("prompt\n")
    with pytest.raises(PromptFileError, match="reads .jsonl, .json .* or .parquet files, not '.csv'"):
        _load(str(tmp_path / "uf.csv"), "ultrafeedback", num_train=1)


def test_hub_path_without_network_says_what_to_do(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # this machine has no network; fail at once
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PromptFileError) as e:
        _load("hf:HuggingFaceH4/ultrafeedback_binarized", "ultrafeedback", split="train_prefs", num_train=1)
    msg = str(e.value)
    for part in ("could not load the hub dataset HuggingFaceH4/ultrafeedback_binarized (split train_prefs)",
                 "needs network access", "HF_DATASETS_OFFLINE=1", "local .jsonl / .parquet", "data.format=ultrafeedback"):
        assert part in msg
    with pytest.raises(PromptFileError, match="expected hf:<owner>/<name>"):
        _load("hf:imdb", "imdb", num_train=1)


def test_config_errors_before_anything_loads():
    with pytest.raises(ConfigError, match=r"data.path: hf:Anthropic/hh-rlhf is a hub dataset; set data.format"):
        validate(compose_config(["data=hh_rlhf", "data.format=prompts"]))
    with pytest.raises(ConfigError, match=r"data.format: 'hhrlhf' is not one of"):
        validate(compose_config(["data=hh_rlhf", "data.format=hhrlhf"]))
    with pytest.raises(ConfigError, match=r"data.prefix_words: .*least, most"):
        validate(compose_config(["data=imdb", "data.prefix_words=[5,2]"]))
    with pytest.raises(ConfigError, match="data.format=imdb has none"):
        validate(compose_config(["data=imdb", "preferences.source=data", "diagnostics=none"]))
    with pytest.raises(ConfigError, match="which optimizer=ppo does not train on"):
        validate(compose_config(["data=ultrafeedback", "preferences.source=data", "optimizer=ppo", "diagnostics=none"]))
    with pytest.raises(ConfigError, match="set diagnostics=none"):
        validate(compose_config(["data=ultrafeedback", "preferences.source=data"]))
    for data in ("hh_rlhf", "tldr", "ultrafeedback", "imdb", "helpful_harmless"):
        validate(compose_config([f"data={data}"]))


# ---- labelled pairs for rlaif-audit ------------------------------------------------------------

def test_labelled_pairs_are_read_by_rlaif_audit(tmp_path):
    from rlaif.audit import load_labelled_pairs

    rows = load_pairs(_jsonl(tmp_path / "hh.jsonl", HH), "hh_rlhf", criterion="harmlessness")
    assert len(rows) == 4
    assert rows[1]["prompt"] == "user: Hi!\n\nassistant: Hello, how can I help?\n\nName a red fruit."
    audit = load_labelled_pairs({"path": str(write_pairs(rows, tmp_path / "pairs.jsonl"))})
    assert [(r["prompt"], r["chosen"], r["rejected"], r["criterion"]) for r in audit] == \
        [(r["prompt"], r["chosen"], r["rejected"], "harmlessness") for r in rows]
    assert len(load_pairs(str(tmp_path / "hh.jsonl"), "hh_rlhf", limit=2)) == 2
    direct = load_labelled_pairs({"path": str(tmp_path / "hh.jsonl"), "format": "hh_rlhf", "criterion": "harmlessness",
                                  "split": "train", "limit": 3})  # audit.data.format: the layout read in place
    assert [(r["prompt"], r["chosen"], r["criterion"]) for r in direct] == \
        [(r["prompt"], r["chosen"], "harmlessness") for r in rows[:3]]
    tldr = load_pairs(_jsonl(tmp_path / "tldr.jsonl", TLDR), "tldr")
    assert len(tldr) == 5 and len({r["id"] for r in tldr}) == 5
    with pytest.raises(PromptFileError, match="has no labelled pairs"):
        load_pairs(str(tmp_path / "hh.jsonl"), "imdb")


# ---- bundled data ------------------------------------------------------------------------------

def test_bundled_ultrafeedback_smoke_file_is_in_the_hub_layout():
    prompts, pairs, stats = _load("builtin:ultrafeedback_smoke.jsonl", "ultrafeedback", num_train=16, num_eval=4)
    assert 16 <= stats["data/rows_in_file"] <= 24 and stats["data/pairs"] == 20 and stats["data/pairs_skipped"] == 0
    assert all(r["chosen_score"] > r["rejected_score"] for r in pairs)
    assert len({p.id for p in prompts}) == 20


def test_bundled_helpful_harmless_requests_mix_both_kinds():
    path = Path(__file__).resolve().parents[1] / "rlaif" / "data" / "dialogue" / "helpful_harmless.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert 64 <= len(rows) <= 96
    kinds = [r["kind"] for r in rows]
    assert set(kinds) == {"helpful", "harmful"} and min(kinds.count("helpful"), kinds.count("harmful")) >= 24
    for r in rows:
        assert r["id"].startswith("hh-harm-" if r["kind"] == "harmful" else "hh-help-")
        assert (r["harm"] is None) == (r["kind"] == "helpful") and r["text"].strip()
    assert len(read_prompt_file("builtin:dialogue/helpful_harmless.jsonl", duplicates="error")) == len(rows)
    first = kinds[:24]
    assert "helpful" in first and "harmful" in first  # shuffled: any split mixes them


# ---- preferences.source=data: offline DPO on the dataset's pairs (tiny model, real pipeline) --------

def test_dpo_trains_on_the_datasets_pairs_without_sampling_or_judging(tiny_overrides, tmp_path):
    from rlaif.pipeline import run

    cfg = compose_config([*tiny_overrides, "data=ultrafeedback", "data.path=builtin:ultrafeedback_smoke.jsonl",
                          "data.num_train=6", "data.num_eval=2", "preferences.source=data", "diagnostics=none",
                          "criteria=helpfulness", "tracker=none"])
    out = tmp_path / "run"
    summary = run(cfg, output_dir=out)
    assert summary["preferences/from_data"] == summary["preferences/pairs"] == 6
    assert summary["train/judge_calls"] == 0 and summary["train/generated_tokens"] == 0
    assert not (out / "candidates.jsonl").exists() or (out / "candidates.jsonl").read_text() == ""
    pairs = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    smoke = {r["prompt_id"]: r for r in map(json.loads, (Path(__file__).resolve().parents[1] / "rlaif" / "data" /
                                                          "ultrafeedback_smoke.jsonl").read_text().splitlines())}
    for p in pairs:
        row = smoke[p["prompt_id"]]
        assert p["chosen"] == [row["chosen"][-1]] and p["rejected"] == [row["rejected"][-1]]
        assert p["prompt"] == row["chosen"][:-1] and p["judge"] == "data:ultrafeedback"
        assert p["margin"] == row["score_chosen"] - row["score_rejected"]
    history = [json.loads(line) for line in (out / "train_history.jsonl").read_text().splitlines()]
    assert any("train/rewards/accuracies" in r for r in history)
    assert "eval/win_rate" in summary


# ---- the reward-model judge's label option ---------------------------------------------------------

@pytest.fixture(scope="module")
def sentiment_classifier(tmp_path_factory) -> str:
    """A tiny randomly initialised 2-label sequence classifier (NEGATIVE / POSITIVE)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    base = build_tiny_model(tmp_path_factory.mktemp("clf-base"))
    tok = AutoTokenizer.from_pretrained(base)
    cfg = AutoConfig.from_pretrained(base)
    cfg.num_labels, cfg.pad_token_id = 2, tok.pad_token_id
    cfg.id2label, cfg.label2id = {0: "NEGATIVE", 1: "POSITIVE"}, {"NEGATIVE": 0, "POSITIVE": 1}
    torch.manual_seed(2)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.mul_(50.0)
    out = tmp_path_factory.mktemp("tiny-clf")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def test_reward_model_judge_scores_a_label_of_a_classifier(sentiment_classifier):
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlaif.criteria import Criterion
    from rlaif.judges import RewardModelJudge
    from rlaif.types import Prompt

    crit = Criterion("positive_sentiment", "positive")
    prompts = [Prompt(f"p{i}", t, [{"role": "user", "content": t}], "eval") for i, t in enumerate(["the film", "a movie"])]
    responses = ["was wonderful and moving.", "was dull and boring."]
    judge = RewardModelJudge(crit, model=sentiment_classifier, dtype="float32", label="POSITIVE")
    model = AutoModelForSequenceClassification.from_pretrained(sentiment_classifier, dtype=torch.float32).eval()
    expected = []
    for p, r in zip(prompts, responses, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([judge.encode(p, r)])).logits[0]
        expected.append(float(logits[1] - logits[0]))  # two labels: log-odds = logit difference
    assert judge.score(prompts, responses) == pytest.approx(expected, abs=1e-4)
    assert abs(expected[0] - expected[1]) > 1e-3  # the scores depend on the text
    by_index = RewardModelJudge(crit, model=sentiment_classifier, dtype="float32", label=1)
    assert by_index.score(prompts, responses) == pytest.approx(expected, abs=1e-4)
    lower = RewardModelJudge(crit, model=sentiment_classifier, dtype="float32", label="positive", label_score="probability")
    assert lower.score(prompts, responses) == pytest.approx([1 / (1 + 2.718281828 ** -x) for x in expected], abs=1e-4)
    gold = RewardModelJudge(model=sentiment_classifier, dtype="float32", label="NEGATIVE")  # data.gold: no criterion
    assert gold.score(prompts, responses) == pytest.approx([-x for x in expected], abs=1e-4)
    with pytest.raises(ValueError, match="judge.label='NEUTRAL' is not a label .* 0=NEGATIVE, 1=POSITIVE"):
        RewardModelJudge(crit, model=sentiment_classifier, dtype="float32", label="NEUTRAL").score(prompts, responses)
    with pytest.raises(ValueError, match="2 output labels .* set judge.label"):
        RewardModelJudge(crit, model=sentiment_classifier, dtype="float32").score(prompts, responses)


# ---- the zephyr_smoke check on synthetic runs --------------------------------------------------------

def _ddpo_run(tmp_path, accuracies, margins, source="data", pairs=16, calls=0, complete=True) -> StudyData:
    history = [{"train/rewards/accuracies": a, "train/rewards/margins": m, "train/step": i + 1}
               for i, (a, m) in enumerate(zip(accuracies, margins, strict=True))]
    history.append({"train/train_loss": 0.5})  # the trainer's closing row has no reward metrics
    rec = RunRecord(path=tmp_path, name="ddpo", config={"preferences.source": source, "optimizer.name": "dpo"},
                    summary={"preferences/from_data": pairs, "train/judge_calls": calls}, history=history,
                    problem=None if complete else "no summary.json")
    return StudyData(runs={"ddpo": rec})


PARAMS = {"run": "ddpo", "min_pairs": 16, "window": 0.334, "min_final_accuracy": 0.5, "min_margin_gain": 0.0}
RISING = ([0.0, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 0.75, 1.0], [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_zephyr_smoke_passes_when_dpo_fits_the_data_pairs(tmp_path):
    result = CHECKS["zephyr_smoke"](_ddpo_run(tmp_path, *RISING), PARAMS)
    assert result.passed, result.lines()
    assert [c.name for c in result.criteria] == ["finished", "trained_on_data_pairs", "reward_accuracy_rose",
                                                  "reward_margin_rose"]
    assert "MT-Bench" in result.check and "not" in result.values["note"]
    assert result.values["accuracy_first"] < result.values["accuracy_last"]


@pytest.mark.parametrize(("change", "failing"), [
    ({"accuracies": [0.5] * 9}, "reward_accuracy_rose"),                       # flat accuracy
    ({"accuracies": [0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.5, 0.5, 0.25]}, "reward_accuracy_rose"),  # rose, not above chance
    ({"margins": [0.3, 0.2, 0.2, 0.1, 0.1, 0.0, 0.0, -0.1, -0.1]}, "reward_margin_rose"),  # margin fell
    ({"source": "judge"}, "trained_on_data_pairs"),                            # trained on the judge's pairs
    ({"pairs": 4}, "trained_on_data_pairs"),                                   # fewer pairs than the file's
    ({"calls": 96}, "trained_on_data_pairs"),                                  # judge labelling was spent
    ({"accuracies": [0.5], "margins": [0.1]}, "reward_accuracy_rose"),          # one logged step: cannot tell
    ({"complete": False}, "finished"),
])
def test_zephyr_smoke_fails(tmp_path, change, failing):
    kw = {"accuracies": RISING[0], "margins": RISING[1], **change}
    result = CHECKS["zephyr_smoke"](_ddpo_run(tmp_path, **kw), PARAMS)
    assert not result.passed
    assert not next(c for c in result.criteria if c.name == failing).passed


def test_zephyr_smoke_fails_without_the_run(tmp_path):
    result = CHECKS["zephyr_smoke"](StudyData(runs={}), PARAMS)
    assert not result.passed and "no run 'ddpo'" in result.criteria[0].why


# ---- the paper configs compose and validate (nothing downloads) --------------------------------------

@pytest.mark.parametrize("experiment", ["paper/zephyr_ddpo", "paper/zephyr_ddpo_smoke", "paper/dpo_sentiment"])
def test_paper_configs_compose_and_validate(experiment):
    from rlaif.reproductions.registry import REGISTRY
    from rlaif.reproductions.study import member_configs

    cfg = compose_config([f"experiment={experiment}"])
    validate(cfg)
    members = member_configs(cfg, [f"experiment={experiment}"])
    assert members and cfg.reproduction.check == REGISTRY[cfg.reproduction.name].check
    if experiment == "paper/dpo_sentiment":
        assert (cfg.data.path, cfg.data.format, cfg.judge.label, cfg.data.gold.label) == \
            ("hf:stanfordnlp/imdb", "imdb", "POSITIVE", "POSITIVE")
        assert sorted(members) == sorted(f"dpo_beta{b}" for b in ("0.05", "0.1", "1", "5")) + \
            sorted(f"ppo_kl{k}" for k in (3, 6, 9, 12))
    else:
        assert cfg.preferences.source == "data" and cfg.data.format == "ultrafeedback"
        assert "MT-Bench" in cfg.reproduction.claim


def test_oasst1_reads_first_turns_only(tmp_path):
    """OpenAssistant/oasst1 stores every message of its trees; the prompts are the roots."""
    from rlaif.data.formats import read_items

    rows = [
        {"message_id": "a", "parent_id": None, "role": "prompter", "text": "How do I boil an egg?", "lang": "en"},
        {"message_id": "b", "parent_id": "a", "role": "assistant", "text": "Put it in boiling water.", "lang": "en"},
        {"message_id": "c", "parent_id": "b", "role": "prompter", "text": "For how long?", "lang": "en"},
        {"message_id": "d", "parent_id": None, "role": "prompter", "text": "Name a prime.", "lang": "en"},
    ]
    path = tmp_path / "oasst1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSpec(path=str(path), format="oasst1")
    items = [it for _, it in read_items(spec)]
    assert [(it.id, it.text) for it in items] == [("a", "How do I boil an egg?"), ("d", "Name a prime.")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"message_id": "x", "parent_id": None, "role": "prompter"}) + "\n")
    with pytest.raises(PromptFileError, match="bad.jsonl:1.*'text'"):
        list(read_items(DatasetSpec(path=str(bad), format="oasst1")))


def test_webgpt_pairs_follow_the_scores(tmp_path):
    from rlaif.data.formats import read_items

    def row(q, a0, a1, s0, s1):
        return {"question": {"full_text": q}, "answer_0": a0, "answer_1": a1, "score_0": s0, "score_1": s1}

    path = tmp_path / "webgpt.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        row("Why is the sky blue?", "Rayleigh scattering.", "Because.", 1.0, -1.0),
        row("What is 2+2?", "5", "4", -0.5, 0.5),
        row("Tie?", "a", "b", 0.0, 0.0)]))
    items = [it for _, it in read_items(DatasetSpec(path=str(path), format="webgpt"))]
    assert [(it.chosen, it.rejected) for it in items] == [("Rayleigh scattering.", "Because."), ("4", "5"), (None, None)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row("q", "a", "b", 1, 0) | {"question": "q"}) + "\n")
    with pytest.raises(PromptFileError, match="bad.jsonl:1.*'question' field is a string"):
        list(read_items(DatasetSpec(path=str(bad), format="webgpt")))
