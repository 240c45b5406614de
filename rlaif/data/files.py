"""Reading prompt files line by line, with bounded memory, and saying exactly what is wrong.

A prompt file is validated in one streaming pass that keeps, per prompt, only where its line
starts and digests of its text and id (40 bytes in all) -- never the text -- so a file of a
million lines costs tens of MB whatever its size. Only the prompts a run uses are read again,
by seeking to their lines. A line longer than ``max_line_bytes`` stops the pass before it is read
whole: a prompt that long is a broken file (a missing newline, a pasted document, a binary blob),
not something any model's context could hold.

What it must not do: interpret a prompt (texts are data: braces, ``${...}`` and Jinja come through
verbatim), or silently skip a line it cannot read.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
from array import array
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20  # 1 MiB, ~250k tokens: longer than any context rlaif trains on
DUPLICATES = ("drop", "error", "keep")  # what to do with a prompt whose text repeats an earlier one
_EXAMPLES = 3  # how many offending lines an error or warning quotes
_ARRAY_HINT = " (a prompt file is JSON Lines: one object per line, not a JSON array)"


class PromptFileError(ValueError):
    pass


_decode_json = json.JSONDecoder().decode


def _digest(s: str, size: int) -> bytes:
    return hashlib.blake2b(s.encode("utf-8"), digest_size=size).digest()


def _repeats(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose key equals an earlier row's, in file order, and the first row with that key."""
    order = np.argsort(keys, kind="stable")  # stable: equal keys stay in file order
    same = np.zeros(len(keys), dtype=bool)
    same[1:] = keys[order[1:]] == keys[order[:-1]]
    if not same.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    run_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(keys))))
    rows, first = order[same], order[run_start[same]]
    by_row = np.argsort(rows, kind="stable")
    return rows[by_row], first[by_row]


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


class PromptFile:
    """One validated pass over a prompt file (``.jsonl``/``.json``: one JSON object per line;
    anything else: one prompt per non-empty line).

    Every line is checked (JSON, the text field, UTF-8, length); exact duplicate texts are dropped,
    refused or kept (``duplicates``) and ids must be unique among the prompts kept. ``len()`` is the
    number of prompts kept; ``read(indices)`` returns (id, text, "<file>:<line>") for those.
    """

    def __init__(self, path: Path, text_field: str = "text", duplicates: str = "drop",
                 max_line_bytes: int = MAX_LINE_BYTES, shown_as: str | None = None):
        if duplicates not in DUPLICATES:
            raise ValueError(f"duplicates must be one of {', '.join(DUPLICATES)}, got {duplicates!r}")
        self.path, self.text_field, self.max_line_bytes = Path(path), text_field, int(max_line_bytes)
        self.is_jsonl = self.path.suffix in {".jsonl", ".json"}
        self._stem, self._path_str = self.path.stem, str(self.path)
        self._shown_as = shown_as or str(path)
        if not self.path.exists():
            raise PromptFileError(f"prompt file {self.path} does not exist (data.path={self._shown_as})")
        if self.path.is_dir():
            raise PromptFileError(f"{self.path} is a folder; data.path must name a .jsonl or .txt file")
        offsets, linenos = array("q"), array("q")
        text_digests, id_digests = bytearray(), bytearray()  # 16 + 8 bytes per prompt
        for lineno, offset, line in self._lines():
            parsed = self._parse(line, lineno)
            if parsed is None:
                continue
            pid, text = parsed
            offsets.append(offset)
            linenos.append(lineno)
            text_digests += _digest(text, 16)
            id_digests += _digest(pid, 8)
        if not offsets:
            raise PromptFileError(f"{self.path}: the prompt file is empty; it needs at least one prompt")
        self.rows_in_file = len(offsets)
        self._all_offsets = np.frombuffer(offsets, dtype=np.int64)
        self._all_linenos = np.frombuffer(linenos, dtype=np.int64)
        keep = self._dedupe(np.frombuffer(text_digests, dtype=np.uint64).reshape(-1, 2), duplicates)
        self._check_unique_ids(np.frombuffer(id_digests, dtype=np.uint64)[keep], np.flatnonzero(keep))
        self.offsets, self.linenos = self._all_offsets[keep], self._all_linenos[keep]  # copies; the rest is freed
        self.duplicates_dropped = self.rows_in_file - len(self.offsets)
        del self._all_offsets, self._all_linenos

    def __len__(self) -> int:
        return len(self.offsets)

    # ---- reading ---------------------------------------------------------------------------

    def _where(self, lineno: int) -> str:
        return f"{self._path_str}:{lineno}"

    def _decode(self, raw: bytes, lineno: int, offset: int) -> str:
        if len(raw) > self.max_line_bytes and not raw.endswith(b"\n"):
            raise PromptFileError(
                f"{self._where(lineno)}: line is longer than {self.max_line_bytes:,} bytes (data.max_line_bytes); "
                "a prompt that long fits no model's context -- the file is probably missing newlines or holds a "
                "whole document per line. Split or shorten it (data.max_prompt_tokens and data.truncation cut "
                "prompts to the model's context), or raise data.max_line_bytes")
        if lineno == 1:
            if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise PromptFileError(f"{self.path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
                                      "re-encode it as UTF-8")
            if raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromptFileError(
                f"{self._where(lineno)}: not valid UTF-8 (byte {offset + e.start} of the file is "
                f"{raw[e.start:e.start + 1]!r}); re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), "
                "and decompress it first if it is compressed") from None

    def _lines(self):
        """(line number, byte offset, decoded line) for every line, reading at most one line at a time."""
        with open(self.path, "rb") as f:
            offset, lineno = 0, 0
            while True:
                raw = f.readline(self.max_line_bytes + 1)
                if not raw:
                    return
                lineno += 1
                yield lineno, offset, self._decode(raw, lineno, offset)
                offset += len(raw)

    def _parse(self, line: str, lineno: int) -> tuple[str, str] | None:
        """(id, text) of one line, or None for a blank line; raises naming the file and line."""
        text = line.strip()
        if not text:
            return None
        if not self.is_jsonl:
            return f"{self._stem}-{lineno}", text
        try:
            row = _decode_json(line)
        except json.JSONDecodeError as e:
            hint = _ARRAY_HINT if line.lstrip().startswith("[") else ""
            raise PromptFileError(f"{self._where(lineno)}: malformed JSON ({e.msg}); each line must be one JSON "
                                  f"object{hint}") from None
        if not isinstance(row, dict):
            raise PromptFileError(f"{self._where(lineno)}: expected a JSON object with a '{self.text_field}' field, "
                                  f"got {_kind(row)}{_ARRAY_HINT if isinstance(row, list) else ''}")
        if self.text_field not in row:
            raise PromptFileError(
                f"{self._where(lineno)}: no '{self.text_field}' field (data.text_field={self.text_field}); this line's fields "
                f"are: {', '.join(map(str, row)) or 'none'}. Set data.text_field to the one holding the prompt")
        text = row[self.text_field]
        if not isinstance(text, str):
            raise PromptFileError(f"{self._where(lineno)}: the '{self.text_field}' field is {_kind(text)}, not a string "
                                  f"(data.text_field={self.text_field})")
        if not text.strip():
            raise PromptFileError(f"{self._where(lineno)}: the '{self.text_field}' field is empty (data.text_field={self.text_field})")
        pid = row.get("id")
        if pid is None:
            pid = f"{self._stem}-{lineno}"
        elif isinstance(pid, bool) or not isinstance(pid, (str, int)):
            raise PromptFileError(f"{self._where(lineno)}: 'id' must be a string or an integer, got {_kind(pid)}")
        return str(pid), text.strip()

    def _read_line(self, f, offset: int, lineno: int) -> tuple[str, str]:
        f.seek(offset)
        parsed = self._parse(self._decode(f.readline(self.max_line_bytes + 1), lineno, offset), lineno)
        assert parsed is not None, f"{self._where(lineno)} changed while it was being read"
        return parsed

    def read(self, indices) -> list[tuple[str, str, str]]:
        """(id, text, "<file>:<line>") of the kept prompts at ``indices``, in the order given."""
        indices = [int(i) for i in indices]
        out: dict[int, tuple[str, str, str]] = {}
        with open(self.path, "rb") as f:
            for i in sorted(set(indices), key=lambda i: self.offsets[i]):  # one forward sweep
                lineno = int(self.linenos[i])
                pid, text = self._read_line(f, int(self.offsets[i]), lineno)
                out[i] = (pid, text, self._where(lineno))
        return [out[i] for i in indices]

    # ---- duplicates ------------------------------------------------------------------------

    def _dedupe(self, digests: np.ndarray, policy: str) -> np.ndarray:
        """Mask of the rows to keep: each text's first occurrence (or every row with ``keep``).

        Rows are grouped by the first half of their text's digest and a repeat is confirmed with
        the second half, so texts are never held in memory.
        """
        keep = np.ones(len(digests), dtype=bool)
        rows, first = _repeats(digests[:, 0])
        confirmed = digests[rows, 1] == digests[first, 1]
        rows, first = rows[confirmed], first[confirmed]
        if policy == "keep" or len(rows) == 0:
            return keep
        lines = self._all_linenos
        examples = ", ".join(f"line {lines[r]} repeats line {lines[f]}"
                             for r, f in zip(rows[:_EXAMPLES], first[:_EXAMPLES], strict=True))
        examples += ", ..." if len(rows) > _EXAMPLES else ""
        if policy == "error":
            raise PromptFileError(
                f"{self.path}: {len(rows)} prompts repeat the text of an earlier line ({examples}); remove them, "
                "or set data.duplicates=drop (keep each text's first occurrence) or data.duplicates=keep")
        log.warning("%s: dropped %d of %d prompts whose text repeats an earlier line (%s), so that no prompt is "
                    "both trained on and held out; data.duplicates=keep keeps them, =error stops instead",
                    self.path, len(rows), len(digests), examples)
        keep[rows] = False
        return keep

    def _check_unique_ids(self, digests: np.ndarray, kept: np.ndarray) -> None:
        rows, first = _repeats(digests)
        if len(rows) == 0:
            return
        with open(self.path, "rb") as f:
            for r, o in zip(kept[rows], kept[first], strict=True):  # confirm: a digest collision is not a duplicate
                pid, _ = self._read_line(f, int(self._all_offsets[r]), int(self._all_linenos[r]))
                if pid == self._read_line(f, int(self._all_offsets[o]), int(self._all_linenos[o]))[0]:
                    raise PromptFileError(f"{self._where(self._all_linenos[r])}: duplicate prompt id '{pid}' "
                                          f"(first at {self._where(self._all_linenos[o])}); ids must be unique")
