"""The reproductions table from study folders: one row per study (paper, claim, scale, pass/fail,
each criterion measured against expected, wall time, date, the command), as markdown or CSV.

``rlaif-reproductions <folder> [...]`` finds the study folders under the given paths (a folder
whose summary.json has ``reproduction/check``) and prints the table; ``--out FILE.md`` writes it.
notebooks/reproductions.ipynb shows the same table and each study's plots. This module only reads.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.io import atomic_write_text


@dataclass
class Study:
    path: Path
    summary: dict[str, Any]
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.summary.get("reproduction/name") or self.path.name)

    @property
    def passed(self) -> bool:
        return bool(self.summary.get("reproduction/passed"))

    def criteria(self) -> list[dict[str, Any]]:
        """[{name, measured, expected, passed, why}] in the order the check reported them."""
        out: dict[str, dict[str, Any]] = {}
        for k, v in self.summary.items():
            parts = k.split("/")
            if len(parts) == 3 and parts[0] == "reproduction" and parts[2] in ("measured", "expected", "passed", "why") \
                    and parts[1] not in ("threshold", "paper", "value"):
                out.setdefault(parts[1], {"name": parts[1]})[parts[2]] = v
        return list(out.values())

    @property
    def command(self) -> str:
        exp = next((o for o in self.overrides if o.startswith("experiment=")), f"experiment=paper/{self.name}")
        rest = [o for o in self.overrides if o != exp]
        return " ".join(["rlaif", exp, *rest])

    @property
    def date(self) -> str:
        f = self.path / "summary.json"
        return dt.datetime.fromtimestamp(f.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d") if f.is_file() else "n/a"


def find_studies(paths: Iterable[str | Path]) -> list[Study]:
    found = []
    for p in map(Path, paths):
        candidates = [p] if (p / "summary.json").is_file() else sorted(p.rglob("summary.json"))
        for s in candidates:
            folder = s if s.is_dir() else s.parent
            try:
                summary = json.loads((folder / "summary.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if "reproduction/check" not in summary:
                continue
            overrides: list[str] = []
            ov = folder / ".hydra" / "overrides.yaml"
            if ov.is_file():
                import yaml

                overrides = [str(o) for o in (yaml.safe_load(ov.read_text()) or [])]
            found.append(Study(folder, summary, overrides))
    return found


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    return "n/a" if v is None else str(v).replace("|", "/")


def markdown(studies: Sequence[Study]) -> str:
    rows = ["| paper | scale | result | criteria (measured vs expected) | wall time | date | command |",
            "|---|---|---|---|---|---|---|"]
    for s in studies:
        crit = "<br>".join(f"{'✓' if c.get('passed') else '✗'} {c['name']}: {_cell(c.get('measured'))} vs "
                           f"{_cell(c.get('expected'))}" for c in s.criteria())
        t = s.summary.get("time/total_s")
        rows.append(f"| {s.name} ({_cell(s.summary.get('reproduction/arxiv')).split()[0]}) | "
                    f"{_cell(s.summary.get('reproduction/scale'))} | {'**pass**' if s.passed else '**fail**'} | {crit} | "
                    f"{'n/a' if t is None else f'{t / 60:.1f} min'} | {s.date} | `{s.command}` |")
    return "\n".join(rows) + "\n"


def write_csv(studies: Sequence[Study], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["paper", "scale", "passed", "criterion", "measured", "expected", "criterion_passed", "wall_s",
                    "folder"])
        for s in studies:
            for c in s.criteria():
                w.writerow([s.name, s.summary.get("reproduction/scale"), s.passed, c["name"], c.get("measured"),
                            c.get("expected"), c.get("passed"), s.summary.get("time/total_s"), s.path])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rlaif-reproductions",
                                 description="The reproductions table (pass/fail, measured vs expected) from study folders.")
    ap.add_argument("paths", nargs="+", type=Path, help="study folders, or folders above them (e.g. outputs/)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here (and a .csv beside it)")
    args = ap.parse_args(argv)
    studies = find_studies(args.paths)
    if not studies:
        print("rlaif-reproductions: no study folder (a summary.json with reproduction/check) under "
              + ", ".join(map(str, args.paths)) + "; run e.g. `rlaif experiment=paper/dpo_sentiment_cpu` first",
              file=sys.stderr)
        return 2
    md = markdown(studies)
    print(md)
    if args.out:
        atomic_write_text(args.out, md)
        write_csv(studies, args.out.with_suffix(".csv"))
        print(f"Wrote {args.out} and {args.out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
