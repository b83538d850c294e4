"""benchmarks/bench_encoders.py measures a case, and the table in docs/models.md is the one its
results file gives."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_encoders  # noqa: E402
from benchmarks.bench_encoders import BEGIN, DOCS, END, RESULTS, markdown_table, run_case, write_docs  # noqa: E402


def test_a_case_reports_its_size_flops_and_step(monkeypatch):
    monkeypatch.setattr(bench_encoders, "CROP_PX", 32)  # a tiny model on tiny inputs: the report, not the speed
    monkeypatch.setattr(bench_encoders, "FLOP_PX", 64)
    result = run_case("test_efficientnet/timm_fpn", warmup=0, steps=1)
    assert (result["encoder"], result["head"]) == ("test_efficientnet", "timm_fpn")
    assert result["parameters_m"] > 0 and result["gflop_per_512px_image"] > 0
    assert result["step_s_best"] == result["step_s_all"][0] > 0


def test_the_docs_table_is_the_one_the_results_give():
    report = json.loads(RESULTS.read_text())
    assert markdown_table(report) in DOCS.read_text()
    assert {case["case"] for case in report["cases"]} == {f"{e}/{h}" for e in ("resnet50", "convnext_tiny",
                                                                              "mobilenetv3_large_100",
                                                                              "efficientnet_b0", "vit_tiny_patch16_224")
                                                          for h in ("timm_unet", "timm_fpn", "deeplabv3plus")}


def test_only_the_marked_section_is_rewritten(tmp_path):
    report = json.loads(RESULTS.read_text())
    page = tmp_path / "models.md"
    page.write_text(f"# Prose\n\nkept\n\n{BEGIN}\nan old table\n{END}\n\nmore prose\n")
    write_docs(report, page)
    text = page.read_text()
    assert text.startswith("# Prose\n\nkept\n\n") and text.endswith(f"{END}\n\nmore prose\n")
    assert "an old table" not in text and markdown_table(report) in text
    page.write_text("no markers")
    with pytest.raises(SystemExit, match="no <!-- bench_encoders: begin -->"):
        write_docs(report, page)
