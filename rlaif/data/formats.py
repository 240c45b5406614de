"""Preference and prompt datasets in the layouts of the hub datasets the papers use.

``data.format`` says how one row becomes a prompt and, where the dataset labels two responses,
a labelled pair (chosen, rejected); ``data.path`` says where the rows are:

* ``hf:<owner>/<name>``: the hub, through ``datasets.load_dataset(<id>, name=data.hf_name,
  data_dir=data.hf_data_dir, split=data.split)`` (needs network, or the HF cache with
  ``HF_DATASETS_OFFLINE=1``);
* a local ``.jsonl`` / ``.json`` (one object per line) or ``.parquet`` file in the same layout;
* a local folder holding a downloaded copy (``data/<split>-*.parquet`` or ``<split>.jsonl`` as on
  the hub): the files of ``data.split`` in it.

Formats (the fields each row must have; extra fields are ignored):

============== ======================================= =========================================
format         dataset                                 row -> prompt / pair
============== ======================================= =========================================
hh_rlhf        Anthropic/hh-rlhf                       ``chosen``, ``rejected``: whole transcripts
                                                       ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``;
                                                       prompt = every turn before the last
                                                       assistant turn (of ``chosen``), pair =
                                                       the two last assistant turns (two turns
                                                       of one speaker in a row are joined)
tldr           openai/summarize_from_feedback          ``info{post|article, title, subreddit}``,
               (``comparisons``)                       ``summaries[{text}]`` (two), ``choice``
                                                       (0/1, the human's pick); prompt = the
                                                       post as "SUBREDDIT / TITLE / POST"
ultrafeedback  HuggingFaceH4/ultrafeedback_binarized   ``prompt``, ``chosen`` / ``rejected``
               (``train_prefs`` / ``test_prefs``)      (message lists ending in the assistant's
                                                       turn), ``score_chosen``/``score_rejected``
imdb           stanfordnlp/imdb                        ``text`` (a review), ``label``; prompt =
                                                       its first 2-8 words (``data.prefix_words``,
                                                       drawn per row with ``data.split_seed``), as
                                                       the DPO paper's IMDb prefixes; no pairs
============== ======================================= =========================================

A prompt's ``text`` is the last user turn (what ``data.template`` wraps and truncation cuts);
earlier turns of a dialogue come before it in ``messages``. Rows whose prompt repeats an earlier
row's (a TL;DR post compared several times, a common review opening) are one prompt with all
their pairs under ``data.duplicates=drop`` (the default; counted in ``data/duplicates_dropped``),
an error under ``error``, and separate prompts under ``keep``. A pair whose two responses are equal
or empty is not kept (``data/pairs_skipped``); the prompt still is.

Labelled pairs are rows in the shape ``rlaif-audit`` reads (rlaif/data/audit/pairs.jsonl):
``id, prompt, chosen, rejected, criterion`` (texts), plus ``prompt_id``, ``chosen_score``,
``rejected_score`` and ``source``. ``preferences.source=data`` trains on them (rlaif/stages/
preferences.py); ``write_pairs`` saves them for ``rlaif-audit audit.data.path=...``.

What it must not do: guess a field a row lacks, or skip a row it cannot read. Every problem is an
error naming the file (or hub dataset), the line or row, the field and the format.
"""

from __future__ import annotations

import json
import random
import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.data.files import PromptFileError, _kind
from rlaif.types import Prompt

PROMPT_FILE = "prompts"  # data.format of a plain prompt file (rlaif/data/files.py)
HUB_PREFIX = "hf:"


@dataclass
class Item:
    """One row as a prompt: the turns before the last user turn, that turn, and its pair if any."""

    text: str
    history: list[dict[str, str]] = field(default_factory=list)
    chosen: str | None = None
    rejected: str | None = None
    chosen_score: float = 1.0
    rejected_score: float = 0.0
    id: str | None = None
    mismatch: bool = False  # chosen and rejected did not share the same prompt (the chosen one's is used)


@dataclass(frozen=True)
class Format:
    name: str
    dataset: str  # the hub dataset of this layout
    fields: tuple[str, ...]  # what every row must have
    parse: Callable[[Row, DatasetSpec], Item]
    pairs: bool  # rows carry labelled pairs
    keep: Callable[[dict], bool] | None = None  # which rows are prompts (None: every row)


class Row:
    """One row being read: where it is (for errors) and typed access to its fields."""

    def __init__(self, row: Any, where: str, fmt: str, index: int):
        self.where, self.fmt, self.index = where, fmt, index
        if not isinstance(row, dict):
            raise PromptFileError(f"{where}: expected an object with the fields of data.format={fmt} "
                                  f"({', '.join(FORMATS[fmt].fields)}), got {_kind(row)}")
        self.row = row

    def fail(self, msg: str) -> PromptFileError:
        return PromptFileError(f"{self.where}: {msg} (data.format={self.fmt})")

    def get(self, name: str, kind: type | tuple[type, ...], within: dict | None = None, label: str | None = None):
        obj = self.row if within is None else within
        label = label or name
        if name not in obj:
            have = ", ".join(map(str, obj)) or "none"
            raise self.fail(f"no '{label}' field; {'this row' if within is None else 'it'} has: {have}")
        v = obj[name]
        if isinstance(v, bool) and kind is not bool or not isinstance(v, kind):
            want = {str: "a string", dict: "an object", list: "a list", int: "an integer", float: "a number"}
            names = [want.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,))]
            raise self.fail(f"the '{label}' field is {_kind(v)}, expected {' or '.join(names)}")
        return v

    def text(self, name: str, within: dict | None = None, label: str | None = None) -> str:
        return self.get(name, str, within, label)

    def score(self, name: str) -> float:
        v = self.get(name, (int, float))
        if v != v:
            raise self.fail(f"the '{name}' field is NaN")
        return float(v)


# ---- the formats --------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def _hh_turns(transcript: str, r: Row, name: str) -> list[dict[str, str]]:
    """An hh-rlhf transcript as chat messages; it must start with a Human turn and end with an Assistant one."""
    s = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip()
    parts = _HH_TURN.split(s)
    if parts[0].strip() or len(parts) < 5:
        raise r.fail(f"the '{name}' field is not an hh-rlhf transcript: it must be '\\n\\nHuman: ...\\n\\nAssistant: ...' "
                     f"with at least one Human and one Assistant turn (it starts {transcript[:60]!r})")
    turns: list[dict[str, str]] = []
    for who, text in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if who == "Human" else "assistant"
        if turns and turns[-1]["role"] == role:  # two turns of one speaker in a row (a few rows have them): one turn
            turns[-1]["content"] = f"{turns[-1]['content']}\n\n{text.strip()}".strip()
        else:
            turns.append({"role": role, "content": text.strip()})
    if turns[0]["role"] != "user" or turns[-1]["role"] != "assistant":
        raise r.fail(f"the '{name}' transcript must start with a Human turn and end with an Assistant turn")
    return turns


def _hh_rlhf(r: Row, spec: DatasetSpec) -> Item:
    chosen = _hh_turns(r.text("chosen"), r, "chosen")
    rejected = _hh_turns(r.text("rejected"), r, "rejected")
    prompt = chosen[:-1]  # alternating turns that end with the assistant's: the prompt ends with a user turn
    return Item(text=prompt[-1]["content"], history=prompt[:-1], chosen=chosen[-1]["content"],
                rejected=rejected[-1]["content"], mismatch=rejected[:-1] != prompt)


def _tldr(r: Row, spec: DatasetSpec) -> Item:
    info = r.get("info", dict)
    body = info.get("post") if info.get("post") is not None else info.get("article")
    if not isinstance(body, str) or not body.strip():
        raise r.fail(f"the 'info' object has no text in 'post' (or 'article'); it has: {', '.join(map(str, info)) or 'none'}")
    title = info.get("title") if isinstance(info.get("title"), str) else ""
    sub = info.get("subreddit") if isinstance(info.get("subreddit"), str) else ""
    head = ([f"SUBREDDIT: r/{sub}"] if sub else []) + ([f"TITLE: {title.strip()}"] if title.strip() else [])
    text = "\n".join([*head, f"POST: {body.strip()}"]) if head else body.strip()
    summaries = r.get("summaries", list)
    if len(summaries) != 2:
        raise r.fail(f"'summaries' must hold two summaries, it holds {len(summaries)}")
    texts = []
    for i, s in enumerate(summaries):
        if not isinstance(s, dict):
            raise r.fail(f"summaries[{i}] is {_kind(s)}, expected an object with a 'text' field")
        texts.append(r.text("text", within=s, label=f"summaries[{i}].text").strip())
    choice = r.get("choice", int)
    if choice not in (0, 1):
        raise r.fail(f"'choice' must be 0 or 1 (the index of the preferred summary), got {choice}")
    pid = info.get("id")
    return Item(text=text, chosen=texts[choice], rejected=texts[1 - choice],
                id=str(pid) if isinstance(pid, (str, int)) and not isinstance(pid, bool) else None)


def _messages(r: Row, name: str) -> list[dict[str, str]]:
    msgs = r.get(name, list)
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise r.fail(f"{name}[{i}] is {_kind(m)}, expected a message {{role, content}}")
        role = r.text("role", within=m, label=f"{name}[{i}].role")
        content = r.text("content", within=m, label=f"{name}[{i}].content")
        out.append({"role": role, "content": content.strip()})
    if len(out) < 2 or out[-1]["role"] != "assistant" or out[-2]["role"] != "user":
        raise r.fail(f"'{name}' must be a message list ending in a user turn and the assistant's response to it "
                     f"(roles: {', '.join(m['role'] for m in out) or 'none'})")
    return out


def _ultrafeedback(r: Row, spec: DatasetSpec) -> Item:
    r.text("prompt")
    chosen, rejected = _messages(r, "chosen"), _messages(r, "rejected")
    prompt = chosen[:-1]  # ends with the user turn the responses answer
    pid = r.row.get("prompt_id")
    return Item(text=prompt[-1]["content"], history=prompt[:-1], chosen=chosen[-1]["content"],
                rejected=rejected[-1]["content"], chosen_score=r.score("score_chosen"),
                rejected_score=r.score("score_rejected"), id=pid if isinstance(pid, str) and pid else None,
                mismatch=rejected[:-1] != prompt)


_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _imdb(r: Row, spec: DatasetSpec) -> Item:
    review = _BREAK.sub(" ", r.text("text")).split()
    r.get("label", int)
    if not review:
        raise r.fail("the 'text' field (the review) is empty")
    k = random.Random(f"{spec.split_seed}-{r.index}").randint(*map(int, spec.prefix_words))  # per row: the same opening whatever else is read
    return Item(text=" ".join(review[:k]))


def _webgpt(r: Row, spec: DatasetSpec) -> Item:
    """openai/webgpt_comparisons: a question, two answers and a score each (-1..1); the higher-scored
    answer is chosen, and a tie gives a prompt without a pair."""
    question = r.text("full_text", within=r.get("question", dict), label="question.full_text")
    a0, a1 = r.text("answer_0"), r.text("answer_1")
    s0, s1 = r.score("score_0"), r.score("score_1")
    if s0 == s1:
        return Item(text=question)
    (c, cs), (j, js) = sorted([(a0, s0), (a1, s1)], key=lambda t: -t[1])
    return Item(text=question, chosen=c, rejected=j, chosen_score=cs, rejected_score=js)


def _oasst1(r: Row, spec: DatasetSpec) -> Item:
    return Item(text=r.text("text"), id=r.text("message_id"))


def _oasst1_first_turn(row: dict) -> bool:
    """OpenAssistant/oasst1 holds every message of its trees, one per row: a prompt is a tree's root,
    the prompter's first turn (parent_id null)."""
    return row.get("parent_id") is None and row.get("role") == "prompter"


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("hh_rlhf", "Anthropic/hh-rlhf", ("chosen", "rejected"), _hh_rlhf, True),
    Format("tldr", "openai/summarize_from_feedback", ("info", "summaries", "choice"), _tldr, True),
    Format("ultrafeedback", "HuggingFaceH4/ultrafeedback_binarized",
           ("prompt", "chosen", "rejected", "score_chosen", "score_rejected"), _ultrafeedback, True),
    Format("imdb", "stanfordnlp/imdb", ("text", "label"), _imdb, False),
    Format("webgpt", "openai/webgpt_comparisons", ("question", "answer_0", "answer_1", "score_0", "score_1"),
           _webgpt, True),
    Format("oasst1", "OpenAssistant/oasst1", ("message_id", "parent_id", "role", "text"), _oasst1, False,
           keep=_oasst1_first_turn),
]}
DATA_FORMATS = (PROMPT_FILE, *FORMATS)


# ---- reading rows -------------------------------------------------------------------------------

def _hub_rows(path: str, fmt: str, split: str, name: str | None, data_dir: str | None) -> Iterator[tuple[str, Any]]:
    dataset_id = path[len(HUB_PREFIX):]
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", dataset_id):
        raise PromptFileError(f"data.path={path}: expected hf:<owner>/<name> (e.g. hf:{FORMATS[fmt].dataset})")
    try:
        from datasets import load_dataset

        ds = load_dataset(dataset_id, name=name, data_dir=data_dir, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown id, unknown split: all the same advice
        raise PromptFileError(
            f"data.path={path}: could not load the hub dataset {dataset_id} (split {split}"
            f"{', name ' + name if name else ''}{', data_dir ' + data_dir if data_dir else ''}): "
            f"{type(e).__name__}: {str(e)[:300]}. Loading from the hub needs network access; without it, "
            f"HF_DATASETS_OFFLINE=1 loads only a copy already in the Hugging Face cache. Or download the dataset "
            f"elsewhere and set data.path to a local .jsonl / .parquet file (or the downloaded folder) with "
            f"data.format={fmt}, which reads it the same way") from None
    where = f"{path} (split {split})"
    for i, row in enumerate(ds):
        yield f"{where} row {i}", row


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise PromptFileError(f"{path}:{lineno}: not valid UTF-8; re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); each line "
                                      "must be one JSON object") from None
            yield f"{path}:{lineno}", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a file that is not parquet
        raise PromptFileError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            i += 1
            yield f"{path} row {i}", row


def _split_files(folder: Path, split: str) -> list[Path]:
    """The files of ``split`` in a downloaded copy of a hub dataset (``data/train_prefs-00000-of-00001.parquet``)."""
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".parquet", ".jsonl", ".json")
                   and (p.stem == split or p.stem.startswith(f"{split}-") or p.stem.startswith(f"{split}_")
                        or p.parent.name == split))
    if not found:
        raise PromptFileError(f"{folder}: no .parquet or .jsonl file of split '{split}' (data.split) in this folder; "
                              f"expected e.g. data/{split}-00000-of-00001.parquet or {split}.jsonl")
    return found


def iter_rows(path: str, fmt: str, split: str = "train", hf_name: str | None = None,
              hf_data_dir: str | None = None) -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of ``path``: ``where`` is "<file>:<line>" or "<file> row <n>"."""
    from rlaif.data import resolve_path

    if path.startswith(HUB_PREFIX):
        yield from _hub_rows(path, fmt, split, hf_name, hf_data_dir)
        return
    p = resolve_path(path)
    if not p.exists():
        raise PromptFileError(f"data file {p} does not exist (data.path={path}); give a .jsonl or .parquet file "
                              f"in the {FORMATS[fmt].dataset} layout, a downloaded copy's folder, or "
                              f"hf:{FORMATS[fmt].dataset}")
    files = _split_files(p, split) if p.is_dir() else [p]
    for f in files:
        if f.suffix == ".parquet":
            yield from _parquet_rows(f)
        elif f.suffix in (".jsonl", ".json"):
            yield from _jsonl_rows(f)
        else:
            raise PromptFileError(f"{f}: data.format={fmt} reads .jsonl, .json (one object per line) or .parquet "
                                  f"files, not '{f.suffix or 'no suffix'}'")


# ---- loading ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSpec:
    """How to read and split a dataset: the ``data.*`` keys of the same names."""

    path: str
    format: str
    split: str = "train"
    hf_name: str | None = None
    hf_data_dir: str | None = None
    prefix_words: tuple[int, int] = (2, 8)
    criterion: str | None = None
    template: str = "{text}"
    system: str | None = None
    num_train: int | None = None
    num_eval: int = 0
    split_seed: int = 0
    duplicates: str = "drop"


def read_items(spec: DatasetSpec) -> Iterator[tuple[str, Item]]:
    if spec.format not in FORMATS:
        raise PromptFileError(f"data.format={spec.format!r} is not one of {', '.join(DATA_FORMATS)}")
    fmt = FORMATS[spec.format]
    for i, (where, row) in enumerate(iter_rows(spec.path, spec.format, spec.split, spec.hf_name, spec.hf_data_dir)):
        r = Row(row, where, spec.format, i)
        missing = [f for f in fmt.fields if f not in row]
        if not missing and fmt.keep is not None and not fmt.keep(row):
            continue
        if missing:
            raise r.fail(f"no {', '.join(repr(f) for f in missing)} field{'s' if len(missing) > 1 else ''}; "
                         f"{fmt.name} rows have {', '.join(fmt.fields)}; this row has: "
                         f"{', '.join(map(str, row)) or 'none'}")
        item = fmt.parse(r, spec)
        if not item.text.strip():
            raise r.fail("the prompt (its last user turn) is empty")
        yield where, item


def load_dataset_with_pairs(spec: DatasetSpec) -> tuple[list[Prompt], list[dict[str, Any]], dict[str, int]]:
    """Prompts split into eval then train (seeded as ``load_prompts_with_stats``), the labelled pairs of
    those prompts (audit rows, each with its ``prompt_id``), and counts for the summary (``data/*``)."""
    groups: dict[str, list[tuple[str, Item]]] = {}
    order: list[str] = []
    rows = repeats = 0
    first_seen: dict[str, str] = {}
    for where, item in read_items(spec):
        rows += 1
        key = json.dumps([item.history, item.text], ensure_ascii=False)
        if key in groups and spec.duplicates != "keep":
            if spec.duplicates == "error":
                raise PromptFileError(f"{where}: its prompt repeats {first_seen[key]}'s (data.duplicates=error); "
                                      "set data.duplicates=drop to merge rows that share a prompt (their pairs are "
                                      "kept) or keep to keep them apart")
            repeats += 1
            groups[key].append((where, item))
            continue
        if key in groups:  # keep: a separate prompt
            key = f"{key}#{rows}"
        groups[key] = [(where, item)]
        first_seen.setdefault(key, where)
        order.append(key)
    if not order:
        raise PromptFileError(f"{spec.path}: no rows (data.split={spec.split}); it needs at least one")
    n, need = len(order), (spec.num_train or 0) + spec.num_eval
    if need > n:
        merged = f" ({repeats} rows share a prompt with an earlier one)" if repeats else ""
        raise PromptFileError(f"{spec.path} has {n} distinct prompts{merged} but data.num_train + data.num_eval = "
                              f"{need}; lower them")
    shuffled = array("q", range(n))
    random.Random(spec.split_seed).shuffle(shuffled)
    eval_idx = sorted(shuffled[: spec.num_eval])
    rest = shuffled[spec.num_eval:] if spec.num_train is None else shuffled[spec.num_eval: spec.num_eval + spec.num_train]
    stem = Path(spec.path.removeprefix(HUB_PREFIX)).name.removesuffix(".parquet").removesuffix(".jsonl")
    prompts, pairs, ids = [], [], set()
    skipped = mismatched = 0
    for k, idx in enumerate(eval_idx + sorted(rest)):
        members = groups[order[idx]]
        where, item = members[0]
        pid = item.id or f"{stem}-{idx + 1}"
        if pid in ids:
            pid = f"{pid}-{idx + 1}"
        ids.add(pid)
        content = spec.template.format(text=item.text)
        msgs = ([{"role": "system", "content": spec.system}] if spec.system else []) + [dict(m) for m in item.history]
        msgs.append({"role": "user", "content": content})
        prompts.append(Prompt(pid, item.text, msgs, "eval" if k < len(eval_idx) else "train", where))
        for j, (w, it) in enumerate(members):
            if it.chosen is None:
                continue
            if not it.chosen.strip() or not it.rejected.strip() or it.chosen.strip() == it.rejected.strip():
                skipped += 1
                continue
            mismatched += it.mismatch
            pairs.append({"id": f"{pid}-{j}", "prompt_id": pid, "prompt": item.text, "chosen": it.chosen,
                          "rejected": it.rejected, "criterion": spec.criterion, "chosen_score": it.chosen_score,
                          "rejected_score": it.rejected_score, "source": w})
    stats = {"data/prompts_in_file": n, "data/rows_in_file": rows, "data/duplicates_dropped": repeats,
             "data/pairs": len(pairs), "data/pairs_skipped": skipped, "data/pairs_prompt_mismatch": mismatched}
    return prompts, pairs, stats


def load_pairs(path: str, format: str, split: str = "train", criterion: str | None = None, limit: int | None = None,
               **spec) -> list[dict[str, Any]]:
    """Every labelled pair of a dataset (audit rows), in file order; ``limit``: at most that many."""
    if format not in FORMATS or not FORMATS[format].pairs:
        with_pairs = [f for f, x in FORMATS.items() if x.pairs]
        raise PromptFileError(f"data.format={format!r} has no labelled pairs; formats with pairs: {', '.join(with_pairs)}")
    s = DatasetSpec(path=path, format=format, split=split, criterion=criterion, duplicates="keep", **spec)
    out = []
    for where, it in read_items(s):
        if it.chosen and it.rejected and it.chosen.strip() and it.rejected.strip() and it.chosen != it.rejected:
            prompt = "\n\n".join([f"{m['role']}: {m['content']}" for m in it.history] + [it.text]) if it.history \
                else it.text
            out.append({"id": f"{it.id}-{len(out) + 1}" if it.id else str(len(out) + 1), "prompt": prompt, "chosen": it.chosen, "rejected": it.rejected,
                        "criterion": criterion, "chosen_score": it.chosen_score, "rejected_score": it.rejected_score,
                        "source": where})
            if limit and len(out) >= limit:
                break
    return out


def write_pairs(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Labelled pairs as a JSONL file ``rlaif-audit audit.data.path=...`` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
