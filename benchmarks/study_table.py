#!/usr/bin/env python
"""The studies in benchmarks/results/study_*.json (`wsseg study --results ...`) as markdown: one
table per dataset, a row per arm (test mIoU mean ± std, its value per seed, minutes) and per
paired difference, and under it where each study ran.

    python benchmarks/study_table.py [--results benchmarks/results] [--write-readme README.md]

`--write-readme` replaces the README's section between the study-table markers with the tables,
so that its numbers are regenerated from the files, never typed in.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
START, END = "<!-- study-tables:start -->", "<!-- study-tables:end -->"
EMPTY = ("No study results yet: `wsseg study ... --results benchmarks/results/study_<name>.json` writes one, and "
         "`python benchmarks/study_table.py --write-readme README.md` tabulates it here.")
NONE = "–"


def _number(value, signed: bool = False, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NONE
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def mean_std(stat: dict, signed: bool = False, digits: int = 3) -> str:
    mean = _number(stat.get("mean"), signed, digits)
    std = stat.get("std")
    return mean if std is None or mean == NONE else f"{mean} ± {std:.{digits}f}"


def per_seed(stat: dict, signed: bool = False) -> str:
    return ", ".join(_number(v, signed) for v in stat["per_seed"])


def study_rows(name: str, study: dict) -> list[list[str]]:
    rows = [[f"`{name}`", result["label"], mean_std(result["miou"]), per_seed(result["miou"]),
             mean_std(result["minutes"], digits=1)] for result in study["results"].values()]
    rows += [[f"`{name}`", difference["label"], mean_std(difference["miou"], signed=True),
              per_seed(difference["miou"], signed=True), NONE] for difference in study["differences"].values()]
    if study.get("gap_closed"):
        gap = study["gap_closed"]
        rows.append([f"`{name}`", f"gap closed {gap['label']}", mean_std(gap["miou"]), per_seed(gap["miou"]), NONE])
    return rows


def where(name: str, study: dict) -> str:
    commit = study["git"]["commit"]
    code = f"wsseg {commit[:10]}{' with local changes' if study['git']['dirty'] else ''}" if commit else "wsseg"
    machine = study["machine"]
    devices = ", ".join(machine.get("cuda_devices") or []) or f"{machine['cpu']}, {machine['cores']} cores"
    overrides = " ".join(f"`--set {o}`" for o in study["overrides"])
    precision = ", ".join(f"{k} {v}" for k, v in study["precision"].items())
    return (f"`{name}`: `{study['config']}`{' ' + overrides if overrides else ''}, split seeds "
            f"{', '.join(str(s) for s in study['split_seeds'])}, {precision}; {code} on {devices}, {study['date']}.")


def render(results: Path) -> str:
    """One table per dataset of every study_*.json in `results` (the empty-state line if none)."""
    studies = [(path.name, json.loads(path.read_text())) for path in sorted(results.glob("study_*.json"))]
    if not studies:
        return EMPTY + "\n"
    md = []
    for dataset in sorted({study["dataset"] for _, study in studies}):
        of_dataset = [(name, study) for name, study in studies if study["dataset"] == dataset]
        rows = [row for name, study in of_dataset for row in study_rows(name, study)]
        md += [f"#### {dataset}", "", "| study | arm or difference (paired per seed) | test mIoU, mean ± std | "
               "per seed | minutes, mean ± std |", "|---|---|---|---|---|"]
        md += ["| " + " | ".join(row) + " |" for row in rows]
        md += ["", *(where(name, study) for name, study in of_dataset), ""]
    return "\n".join(md).rstrip("\n") + "\n"


def with_tables(readme: str, tables: str) -> str:
    """`readme` with its text between the study-table markers replaced by `tables`."""
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise ValueError(f"the README needs one {START} line and, below it, one {END} line")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{tables}{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--write-readme", type=Path, metavar="README",
                        help="rewrite the README's section between the study-table markers")
    args = parser.parse_args(argv)
    tables = render(args.results)
    if args.write_readme is None:
        sys.stdout.write(tables)
        return 0
    try:
        args.write_readme.write_text(with_tables(args.write_readme.read_text(), tables))
    except (OSError, ValueError) as err:
        print(f"error: {args.write_readme}: {err}", file=sys.stderr)
        return 2
    print(f"wrote the study tables into {args.write_readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
