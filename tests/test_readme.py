"""The README's data table lists every dataset kind, each with a config that exists."""

import re
from pathlib import Path

from wsseg.datasets import known_kinds

README = Path(__file__).resolve().parents[1] / "README.md"


def _data_table() -> dict[str, str]:
    """`data.kind` → its example-config cell, from the table under "## Other data"."""
    section = README.read_text().split("## Other data\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([a-z0-9_]+)` \|.*\| ([^|]*) \|$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_every_data_kind_is_in_the_readme_data_table():
    table = _data_table()
    assert sorted(table) == known_kinds(), set(known_kinds()) ^ set(table)


def test_every_example_config_of_the_data_table_exists():
    for kind, cell in _data_table().items():
        configs = re.findall(r"configs/[\w.-]+\.yaml", cell)
        assert configs, f"{kind}: no example config"
        for config in configs:
            assert (README.parent / config).is_file(), f"{kind}: {config} does not exist"


def test_every_config_is_in_the_table_of_experiments():
    section = README.read_text().split("### Earlier experiments as configs\n", 1)[1].split("\n### ", 1)[0]
    named = set(re.findall(r"configs/([\w.-]+\.yaml)", section))
    shipped = {path.name for path in (README.parent / "configs").glob("*.yaml")}
    assert shipped <= named, f"configs without a row in the README's table of experiments: {sorted(shipped - named)}"
