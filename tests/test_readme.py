"""README.md stays a user's guide: its data table lists every dataset kind with a config that
exists, its table of experiments every shipped config, and its links lead somewhere; the dated
measurements live in docs/results.md, newest first."""

import re
from pathlib import Path

from wsseg.datasets import known_kinds

README = Path(__file__).resolve().parents[1] / "README.md"
RESULTS = README.parent / "docs" / "results.md"


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


def test_readme_is_a_guide_of_at_most_400_lines():
    # History belongs in docs/results.md; a guide that grows past this is gathering it again. The
    # study tables between the markers are generated from the committed results (and checked by
    # tests/test_study_table.py): they grow with the studies, not with prose.
    text = README.read_text()
    start, end = "<!-- study-tables:start -->", "<!-- study-tables:end -->"
    guide = text.split(start)[0] + text.split(end)[1]
    lines = guide.splitlines()
    assert len(lines) <= 400, f"README.md has {len(lines)} lines of guide: move measurements to docs/results.md"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_of_the_readme_and_the_results_points_at_something_that_exists():
    for document in (README, RESULTS):
        text = document.read_text()
        # Fenced code holds commands and YAML, whose brackets are no links.
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", prose, flags=re.M)}
        links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose)
        assert links, f"{document.name}: no links found"
        for link in links:
            if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http(s), mailto: not checked offline
                continue
            path, _, fragment = link.partition("#")
            if not path:
                assert fragment in anchors, f"{document.name}: no heading for #{fragment}"
                continue
            target = (document.parent / path).resolve()
            assert target.exists(), f"{document.name}: {link} points at nothing"


def test_the_results_are_dated_entries_newest_first():
    dates = re.findall(r"^## (\d{4}-\d{2}-\d{2})$", RESULTS.read_text(), flags=re.M)
    assert dates, "docs/results.md: no dated (## YYYY-MM-DD) entries"
    assert dates == sorted(dates, reverse=True) and len(set(dates)) == len(dates), dates
