"""benchmarks/table.py turns the result files, in the layout the benchmarks write, into table rows."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.table import render  # noqa: E402

MACHINE = {"cpu": "Test CPU", "cores": 2, "amx_bf16": False, "avx512_bf16": True, "torch": "2.0", "python": "3.11"}


def rates(best_gflop_s: float, **extra) -> dict:
    return {"best_s": 1.0, "median_s": 1.1, "calls": 3, "best_gflop_s": best_gflop_s,
            "median_gflop_s": best_gflop_s * 0.9, **extra}


def gemm(fp32: float, bf16: float) -> dict:
    return {"device": "cpu", "n": 4096, "threads": 2, "warmup_calls": 2, "load_avg_1min_before": 0.5,
            "fp32": rates(fp32), "bf16": rates(bf16, bf16_in_hardware=True), "peak_dtype": "bf16",
            "peak_gflop_s": bf16, "load_avg_1min_after": 0.7}


def write(folder: Path, name: str, report: dict) -> None:
    (folder / name).write_text(json.dumps(report))


def write_results(folder: Path) -> None:
    conv = {"device": "cpu", "input_shape": [8, 128, 64, 64], "out_channels": 128, "kernel": 3, "threads": 2,
            "load_avg_1min_before": 0.7, "load_avg_1min_after": 0.8,
            "fp32": rates(50.0, gflop_per_call=29.0, fraction_of_gemm_peak=0.05),
            "bf16_channels_last": rates(250.0, gflop_per_call=29.0, fraction_of_gemm_peak=0.25)}
    write(folder, "machine.json", {"what": "machine limits", "machine": MACHINE, "load_avg_1min_before": 0.5,
                                   "load_avg_1min_after": 0.8,
                                   "cases": [{"device": "cpu", "threads": 2, "gemm": gemm(100.0, 1000.0),
                                              "conv3x3": conv}]})
    model_case = {"case": "encdec_w1_2x256_fp32", "precision": "fp32", "batch": 2, "threads": 2,
                  "gflop_per_step": 50.0, "step_s_best": 2.0, "train_images_per_s": 1.0, "achieved_gflop_s": 25.0,
                  "fraction_of_gemm_peak": 0.025, "fraction_of_gemm_same_precision": 0.25,
                  "rounds": [{"load_avg_1min_before": 0.9, "load_avg_1min_after": 1.1}]}
    write(folder, "models.json", {"what": "training step", "peak_memory": "ru_maxrss", "machine": MACHINE,
                                  "gemm_peak": {"2": gemm(100.0, 1000.0)}, "cases": [model_case]})

    def stage_case(name: str, step_s: float, **extra) -> dict:
        return {"case": name, "precision": "fp32", "batch": 2, "crop_px": 321, "threads": 2, "pamr_s_median": 1.0,
                "step_s_median": step_s, "step_s_best": step_s, "achieved_gflop_s": 20.0,
                "fraction_of_gemm_peak": 0.02, "load_avg_1min_before": 1.0, "load_avg_1min_after": 1.2, **extra}

    losses = {name: {"classification": 0.3, "self_supervised": 0.0, "total": total,
                     "self_supervised_shared_targets": shared}
              for name, total, shared in (("fp32", 0.31, 2.4), ("fp32_channels_last", 0.3, 1.8),
                                          ("bf16_channels_last", 0.3003, 1.8036))}
    write(folder, "single_stage.json", {
        "what": "single-stage training step", "peak_memory": "ru_maxrss", "machine": MACHINE,
        "gemm_peak": gemm(100.0, 1000.0),
        "bf16_vs_fp32_first_step_loss": {
            "losses": losses, "rtol": 0.016, "atol": 1e-5, "within_bf16_tolerance": True,
            "total": {"bf16_vs_fp32_channels_last_abs_diff": 0.0003, "bf16_vs_fp32_channels_last_rel_diff": 0.001},
            "self_supervised_shared_targets": {"bf16_vs_fp32_channels_last_abs_diff": 0.0036,
                                               "bf16_vs_fp32_channels_last_rel_diff": 0.002}},
        "cases": [stage_case("fp32", 20.0, published_over_wsseg=1.5),
                  stage_case("published_fp32", 30.0)]})
    step = {"segmenter": "effnet_lite0_unet", "batch": 8, "crop_px": 160, "threads": 2, "step_s_best": 0.5,
            "samples_per_s": 16.0, "load_avg_1min_before": 0.4, "load_avg_1min_after": 0.5}
    write(folder, "loader.json", {
        "what": "loader", "machine": MACHINE, "step": step,
        "cases": [{"workers": workers, "samples_per_s": rate, "first_batch_s": 0.1,
                   "loader_over_step": rate / 16.0, "load_avg_1min_before": 0.5, "load_avg_1min_after": 0.6}
                  for workers, rate in ((0, 320.0), (2, 640.0))]})
    write(folder, "notes.json", {"what": "something no renderer reads"})


def test_table_renders_every_result_with_its_absolute_figures_and_ratio(tmp_path):
    write_results(tmp_path)
    table = render(tmp_path)
    lines = table.splitlines()
    assert lines[0] == "| what | absolute | ratio | load (1 min) |"
    rows = [line for line in lines if line.startswith("| `")]
    assert len(rows) == 2 + 1 + 4 + 3  # machine, models, single stage (2 cases + 2 loss checks), loader
    # machine.json first: every other row is read against it.
    assert rows[0].startswith("| `machine.json` GEMM 4096², cpu, 2 thread(s)")
    assert "fp32 100, bf16 1,000 GFLOP/s | bf16/fp32 10× | 0.50–0.70 |" in rows[0]
    assert "of GEMM peak: fp32 5.0 %, bf16 25.0 %" in rows[1]
    assert "| 2 s/step, 1 img/s, 25 GFLOP/s | 2.5 % of GEMM peak | 0.90–1.10 |" in table
    assert "| 20 s/step (PAMR 1 s), 20 GFLOP/s | published/wsseg 1.5×, 2.0 % of GEMM peak |" in table
    published = next(row for row in rows if "published_fp32" in row)
    assert "published/wsseg" not in published and "30 s/step" in published
    assert "fp32 0.30000, bf16 0.30030 | relative difference 0.10 % (bf16 tolerance 1.6 %)" in table
    assert "fp32 1.80000, bf16 1.80360 | relative difference 0.20 % (bf16 tolerance 1.6 %)" in table
    assert "| 0.5 s/step = 16 samples/s | — |" in table
    assert "training DataLoader, 0 worker(s) | 320 samples/s, first batch 0.1 s | loader/step 20× |" in table
    assert "training DataLoader, 2 worker(s) | 640 samples/s, first batch 0.1 s | loader/step 40× |" in table
    assert ("Machine of machine.json, models.json, single_stage.json, loader.json: Test CPU, 2 cores, torch 2.0."
            in table)
    assert "Not tabulated: notes.json." in table


def test_a_result_saved_under_a_machine_name_is_rendered_as_its_benchmark(tmp_path):
    write_results(tmp_path)
    (tmp_path / "single_stage.json").rename(tmp_path / "single_stage_other-cpu.json")
    (tmp_path / "loader.json").rename(tmp_path / "loaders.json")
    table = render(tmp_path)
    assert "| `single_stage_other-cpu.json` " in table and "published/wsseg 1.5×" in table
    assert "Not tabulated: loaders.json, notes.json." in table


def test_a_file_from_before_the_peak_was_measured_shows_no_ratio(tmp_path):
    old = {"case": "encdec_w1_2x256_fp32", "threads": 1, "step_s_best": 5.74, "train_images_per_s": 0.35,
           "rounds": [{"load_avg_1min_before": 1.0, "load_avg_1min_after": 1.5}]}
    write(tmp_path, "models.json", {"what": "training step", "machine": MACHINE, "cases": [old]})
    row = next(line for line in render(tmp_path).splitlines() if line.startswith("| `models.json`"))
    assert row == ("| `models.json` training step encdec_w1_2x256_fp32, 1 thread(s) | 5.74 s/step, 0.35 img/s | — "
                   "| 1.00–1.50 |")


def test_pamr_against_the_published_module_compile_and_scaling_rows(tmp_path):
    timing = {"median_ms": 20.0, "min_ms": 18.0, "repeats": 10}
    write(tmp_path, "pseudo_labels.json", {
        "machine": MACHINE, "threads": 2, "load_average_1_5_15_before": [0.5, 0, 0],
        "load_average_1_5_15_after": [0.7, 0, 0],
        "pamr": [{"masks_shape": [1, 21, 81, 81], "num_iter": 10, "wsseg": timing,
                  "published": {"median_ms": 180.0, "min_ms": 170.0, "repeats": 10},
                  "published_over_wsseg_median": 9.0},
                 {"masks_shape": [1, 12, 360, 480], "num_iter": 10, "wsseg": timing}],
        "crf": {"crop_hw": [512, 512], "num_classes": 6, "n_iter": 10, "median_ms": 500.0, "min_ms": 490.0}})
    write(tmp_path, "compile.json", {"machine": MACHINE, "cases": [
        {"model": "encdec_unpool", "batch": 8, "crop_px": 192, "precision": "bf16", "threads": 2,
         "eager_step_s": 0.48, "compiled_step_s": 0.4, "speedup_compiled": 1.2, "compiled_first_step_s": 5.7}]})
    write(tmp_path, "demo.json", {"machine": MACHINE, "cases": [
        {"commit": "abc1234", "pip_cache": "off", "install_s": 80.0, "demo_s": 580.0, "total_s": 660.0,
         "total_over_target": 0.917, "task_i_miou": 0.7561, "task_ii_miou": 0.7774,
         "load_avg_1min_before": 0.1, "load_avg_1min_after": 1.9}]})
    write(tmp_path, "scaling.json", {"machine": MACHINE, "cases": [
        {"model": "effnet_lite0_unet", "global_batch": 8, "crop_px": 160, "one_process_threads": 2,
         "step_s_best": {"1 process": 0.3, "2 processes": 0.25}, "speedup_processes_over_threads": 1.2,
         "load_avg_1min_before": 0.5, "load_avg_1min_after": 0.6},
        {"model": "fcn8s", "gradient_mib": 512.0, "link": "NVLink", "assumed_bus_gb_s": 150.0, "gpus": 8,
         "allreduce_s_per_step": 0.0063}]})
    table = render(tmp_path)
    assert "PAMR 1×21×81×81, 10 iterations, 2 thread(s) | median 20 ms (fastest 18); published 180 ms | " \
           "9× faster than published | 0.50–0.70 |" in table
    assert "PAMR 1×12×360×480, 10 iterations, 2 thread(s) | median 20 ms (fastest 18) | — |" in table
    assert "compiled 1.2× faster" in table and "first compiled step 5.7 s" in table
    assert "0.3 vs 0.25 s/step | processes 1.2× |" in table
    assert "512 MiB, 6.3 ms/step" in table
    assert ("| `demo.json` `make demo` from a fresh clone at abc1234, install included (pip cache off) | install 80 s "
            "+ demo 580 s = 11 min; task i mIoU 0.756, task ii 0.777 | 0.917× the 12-min target | 0.10–1.90 |") in table
    assert "Not tabulated" not in table
