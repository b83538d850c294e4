"""benchmarks/study_table.py: the study_*.json of `wsseg study --results` as one table per
dataset, and the README's section of them kept in step with the committed results."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.study_table import EMPTY, END, RESULTS, START, main, render, with_tables  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def stat(per_seed: list) -> dict:
    import numpy as np

    finite = [v for v in per_seed if v is not None]
    return {"per_seed": per_seed, "mean": float(np.mean(finite)),
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None, "n": len(finite)}


def synthetic_study(dataset: str, arms: dict[str, list], oracle: bool = False) -> dict:
    """A study.json as `wsseg study` writes it, with the given per-seed mIoU per arm."""
    labels = {"i": "task i", "semi": "semi", "ii": "task ii", "oracle": "oracle"}
    seeds = list(range(len(next(iter(arms.values())))))
    results = {arm: {"label": labels[arm], "miou": stat(values), "per_class": {"car": stat(values)},
                     "minutes": stat([1.5 + s for s in seeds]), "epochs_trained": [4] * len(seeds)}
               for arm, values in arms.items()}
    differences = {}
    for a, b, label in (("semi", "i", "semi − i (what the N2 images bought)"),
                        ("ii", "i", "ii − i (what the N2 images and their tags bought)"),
                        ("ii", "semi", "ii − semi (what the tags bought)")):
        if a in arms and b in arms:
            differences[f"{a}_minus_{b}"] = {"label": label, "arms": [a, b],
                                             "miou": stat([x - y for x, y in zip(arms[a], arms[b])])}
    study = {"what": "wsseg study", "config": f"{dataset}.yaml", "name": dataset, "dataset": dataset,
             "overrides": ["data.root=DIR"], "arms": list(arms), "split_seeds": seeds,
             "precision": {"train.precision": "fp32"}, "git": {"commit": "0123456789abcdef", "dirty": False},
             "machine": {"cpu": "Test CPU", "cores": 2, "torch_threads": 2, "cuda_devices": []},
             "date": "2026-12-07T10:00:00+00:00", "classes": ["car"], "classes_in_mean": ["car"],
             "results": results, "differences": differences}
    if oracle:
        study["gap_closed"] = {"label": "(ii − i) / (oracle − i)", "miou": stat([0.5, None])}
    return study


def test_one_table_per_dataset_with_arm_and_difference_rows(tmp_path):
    (tmp_path / "study_dubai.json").write_text(json.dumps(synthetic_study(
        "dubai", {"i": [0.5, 0.4], "semi": [0.52, 0.41], "ii": [0.55, 0.45], "oracle": [0.6, 0.402]}, oracle=True)))
    (tmp_path / "study_demo.json").write_text(json.dumps(synthetic_study("demo", {"i": [0.7, 0.72, 0.68]})))
    (tmp_path / "demo.json").write_text("{}")  # another benchmark's file: not a study
    md = render(tmp_path)
    assert md.index("#### demo") < md.index("#### dubai") and md.count("| study |") == 2
    assert "| `study_demo.json` | task i | 0.700 ± 0.020 | 0.700, 0.720, 0.680 | 2.5 ± 1.0 |" in md
    assert "| `study_dubai.json` | ii − semi (what the tags bought) | +0.035 ± 0.007 | +0.030, +0.040 | – |" in md
    # A seed where the oracle gained too little to measure a gap closed: – for it.
    assert "| `study_dubai.json` | gap closed (ii − i) / (oracle − i) | 0.500 | 0.500, – | – |" in md
    assert ("`study_dubai.json`: `dubai.yaml` `--set data.root=DIR`, split seeds 0, 1, train.precision fp32; "
            "wsseg 0123456789 on Test CPU, 2 cores, 2026-12-07T10:00:00+00:00.") in md
    assert "demo.json`" not in md.replace("study_demo.json", "")


def test_write_readme_rewrites_only_the_marked_section(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n\n{START}\nold table\n{END}\n\nafter\n")
    assert main(["--results", str(tmp_path / "results"), "--write-readme", str(readme)]) == 0
    assert readme.read_text() == f"# Title\n\nbefore\n\n{START}\n{EMPTY}\n{END}\n\nafter\n"
    (tmp_path / "results" / "study_demo.json").write_text(json.dumps(synthetic_study("demo", {"i": [0.7, 0.72]})))
    assert main(["--results", str(tmp_path / "results"), "--write-readme", str(readme)]) == 0
    text = readme.read_text()
    assert "#### demo" in text and EMPTY not in text and text.endswith(f"{END}\n\nafter\n")
    assert with_tables(text, render(tmp_path / "results")) == text  # a second pass changes nothing
    readme.write_text("# no markers\n")
    capsys.readouterr()
    assert main(["--results", str(tmp_path / "results"), "--write-readme", str(readme)]) == 2
    assert START in capsys.readouterr().err


def test_the_readme_study_tables_are_those_of_the_committed_results():
    readme = README.read_text()
    assert with_tables(readme, render(RESULTS)) == readme, \
        "the README's study tables are stale: run python benchmarks/study_table.py --write-readme README.md"
    if not list(RESULTS.glob("study_*.json")):
        assert EMPTY in readme


@pytest.mark.parametrize("bad", ["", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"])
def test_markers_missing_out_of_order_or_twice_are_refused(bad):
    with pytest.raises(ValueError, match="study-tables"):
        with_tables(bad, EMPTY + "\n")


def test_the_benchmark_table_leaves_studies_to_the_study_table(tmp_path):
    from benchmarks.table import render as render_benchmarks

    (tmp_path / "study_demo.json").write_text(json.dumps(synthetic_study("demo", {"i": [0.7, 0.72]})))
    (tmp_path / "notes.json").write_text("{}")
    table = render_benchmarks(tmp_path)
    assert "study_demo.json" not in table and "Not tabulated: notes.json." in table
