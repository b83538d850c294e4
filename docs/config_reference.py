#!/usr/bin/env python
"""Write docs/config.md, the reference of every config key, from the schema itself.

A key's type and default come from its dataclass field in `wsseg/pipeline/config.py`, and its
description from the comment block written right above the field there (and a comment on the
same line), so the reference cannot drift from the code: `tests/test_config_reference.py` fails
when docs/config.md is not what this script writes.

    python docs/config_reference.py            # rewrite docs/config.md
    python docs/config_reference.py --check    # exit 1 if docs/config.md is out of date
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wsseg.pipeline import config as schema  # noqa: E402

SOURCE = Path(schema.__file__)
OUT = REPO / "docs" / "config.md"


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """{(class name, field name): its comment}: the `#` lines right above the field in the class
    body (a blank line or code ends the block) and a trailing `#` comment on its own line."""
    lines = source.splitlines()
    comments = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            block, row = [], item.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#"):
                block.insert(0, lines[row].strip().lstrip("#").strip())
                row -= 1
            line = lines[item.lineno - 1]
            if "#" in line and not _in_string(line, line.index("#")):
                block.append(line[line.index("#") + 1:].strip())
            comments[(node.name, item.target.id)] = " ".join(part for part in block if part)
    return comments


def _in_string(line: str, position: int) -> bool:
    before = line[:position]
    return before.count('"') % 2 == 1 or before.count("'") % 2 == 1


def type_name(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace("Union[", "union[")


def default_of(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "(section)"
    return "null" if value is None else repr(value).replace("'", "") if not isinstance(value, str) else value


def rows(cls, prefix: str, comments: dict) -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls, vars(schema))
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            doc = kind.__doc__ or ""
            if doc.startswith(f"{kind.__name__}("):  # the signature dataclasses write where no docstring is
                doc = ""
            note = comments.get((cls.__name__, f.name)) or " ".join(doc.split("\n\n")[0].split())
            out.append((key, "section", "", note))
            out += rows(kind, key + ".", comments)
            continue
        out.append((key, type_name(f.type), default_of(f), comments.get((cls.__name__, f.name), "")))
    return out


def reference() -> str:
    table = rows(schema.Config, "", field_comments(SOURCE.read_text()))
    keys = [r for r in table if r[1] != "section"]
    md = ["# Config reference", "",
          "Generated from `wsseg/pipeline/config.py` by `python docs/config_reference.py`; do not edit by hand.",
          f"{len(keys)} keys. Every key of a YAML config or a `--set` override must be one of them: an unknown",
          "key is an error naming it. Checks that involve several keys, or the dataset, run before anything",
          "trains (`wsseg check-data`, `wsseg train`).", "",
          "| key | type | default | what it is, and why |", "|---|---|---|---|"]
    for key, kind, default, note in table:
        cell = lambda text: text.replace("|", "\\|")  # noqa: E731
        if kind == "section":
            md.append(f"| **`{key}`** | section | | {cell(note)} |")
        else:
            md.append(f"| `{key}` | `{cell(kind)}` | `{cell(default)}` | {cell(note)} |")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config.md is out of date")
    args = parser.parse_args(argv)
    text = reference()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT.relative_to(REPO)} is out of date: run python docs/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
