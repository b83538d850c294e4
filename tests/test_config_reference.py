"""docs/config.md is generated from the config schema (docs/config_reference.py) and kept current."""

import dataclasses
import sys
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from docs.config_reference import field_comments, main, reference  # noqa: E402


def test_the_config_reference_is_current():
    assert main(["--check"]) == 0, "docs/config.md is out of date: run python docs/config_reference.py"


def test_every_key_of_the_schema_is_in_the_reference():
    from wsseg.pipeline.config import config_to_dict
    from wsseg.pipeline.config_files import config_from_dict

    def keys(values, prefix=""):
        for name, value in values.items():
            if isinstance(value, dict) and name != "options":
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    text = reference()
    missing = [key for key in keys(config_to_dict(config_from_dict({}))) if f"| `{key}` |" not in text]
    assert not missing


def test_comments_above_and_beside_a_field_are_its_description():
    source = '''
class A:
    # Why this default.
    # Second line.
    x: int = 1  # and a note
    y: int = 2

    # Not y's: a blank line ends the block above z.
    z: str = "#"
'''
    comments = field_comments(source)
    assert comments[("A", "x")] == "Why this default. Second line. and a note"
    assert comments[("A", "y")] == ""
    assert comments[("A", "z")] == "Not y's: a blank line ends the block above z."


def test_the_number_of_config_keys_only_goes_down():
    """A ratchet on the schema's size (issue 26, "a config a person can hold in their head"):
    116 keys before the published and never-varied settings became constants, 85 after, 69 once
    the settings no config varied went too (2026-12-08). A new
    key retires another, or the change that adds it argues for raising the bound."""
    from wsseg.pipeline.config import Config

    def leaves(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            yield from leaves(kind) if dataclasses.is_dataclass(kind) else [f.name]

    count = len(list(leaves(Config)))
    assert f"{count} keys." in reference()  # the count docs/config.md states
    assert count <= 69, f"the config has {count} keys, more than the 69 of the ratchet"
