#!/usr/bin/env python
"""The benchmark results as one markdown table, for the README: what was measured, the absolute
figures, the ratio they support, and the load they were measured under.

    python benchmarks/table.py [--results benchmarks/results]

Every row is read from a benchmarks/results/*.json as its benchmark wrote it, so the README's
numbers can be regenerated from the files, never typed in. A ratio is only shown where the
file holds both of its terms from one run; an older file without them shows "—".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"
NONE = "—"

Row = tuple[str, str, str, str]  # what, absolute figures, ratio, 1-minute load


def num(value, digits: int = 3) -> str:
    """`value` to `digits` significant digits, without an exponent for everyday magnitudes."""
    if value is None:
        return NONE
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def percent(fraction) -> str:
    return NONE if fraction is None else f"{100 * fraction:.{1 if fraction >= 0.01 else 2}f} %"


def of_peak(fraction) -> str:
    return NONE if fraction is None else f"{percent(fraction)} of GEMM peak"


def times(ratio) -> str:
    return NONE if ratio is None else f"{num(ratio)}×"


def load_span(*values) -> str:
    """The 1-minute load averages seen around a measurement, lowest to highest."""
    seen = [v for v in values if v is not None]
    if not seen:
        return NONE
    low, high = min(seen), max(seen)
    return f"{low:.2f}" if low == high else f"{low:.2f}–{high:.2f}"


def machine_rows(report: dict) -> list[Row]:
    rows = []
    for case in report["cases"]:
        where = f"{case['device']}, {case['threads']} thread(s)"
        gemm, conv = case["gemm"], case["conv3x3"]
        fp32, bf16 = gemm["fp32"]["best_gflop_s"], gemm.get("bf16", {}).get("best_gflop_s")
        rows.append((f"GEMM {gemm['n']}², {where}", f"fp32 {num(fp32)}, bf16 {num(bf16)} GFLOP/s",
                     f"bf16/fp32 {times(bf16 / fp32 if bf16 else None)}",
                     load_span(gemm["load_avg_1min_before"], gemm["load_avg_1min_after"])))
        shape = "×".join(str(d) for d in conv["input_shape"])
        rows.append((f"3×3 conv fwd+bwd {shape} → {conv['out_channels']}, {where}",
                     f"fp32 {num(conv['fp32']['best_gflop_s'])}, bf16 channels-last "
                     f"{num(conv['bf16_channels_last']['best_gflop_s'])} GFLOP/s",
                     f"of GEMM peak: fp32 {percent(conv['fp32'].get('fraction_of_gemm_peak'))}, bf16 "
                     f"{percent(conv['bf16_channels_last'].get('fraction_of_gemm_peak'))}",
                     load_span(conv["load_avg_1min_before"], conv["load_avg_1min_after"])))
    return rows


def models_rows(report: dict) -> list[Row]:
    rows = []
    for case in report["cases"]:
        gflop_s = case.get("achieved_gflop_s")
        rows.append((f"training step {case['case']}, {case['threads']} thread(s)",
                     f"{num(case['step_s_best'])} s/step, {num(case['train_images_per_s'])} img/s"
                     + (f", {num(gflop_s)} GFLOP/s" if gflop_s is not None else ""),
                     of_peak(case.get("fraction_of_gemm_peak")),
                     load_span(*(r[k] for r in case.get("rounds", [])
                                 for k in ("load_avg_1min_before", "load_avg_1min_after")))))
    return rows


def single_stage_rows(report: dict) -> list[Row]:
    rows = []
    for case in report["cases"]:
        best = case.get("step_s_best", case["step_s_median"])
        gflop_s = case.get("achieved_gflop_s")
        ratios = [of_peak(case["fraction_of_gemm_peak"])] if "fraction_of_gemm_peak" in case else []
        if "published_over_wsseg" in case:
            ratios.insert(0, f"published/wsseg {times(case['published_over_wsseg'])}")
        rows.append((f"single-stage step {case['case']}, {case['batch']}×{case['crop_px']}², "
                     f"{case['threads']} thread(s)",
                     f"{num(best)} s/step (PAMR {num(case.get('pamr_s_median'))} s)"
                     + (f", {num(gflop_s)} GFLOP/s" if gflop_s is not None else ""),
                     ", ".join(ratios) or NONE, load_span(case["load_avg_1min_before"], case["load_avg_1min_after"])))
    check = report.get("bf16_vs_fp32_first_step_loss")
    if check:
        fp32, bf16 = check["losses"]["fp32_channels_last"], check["losses"]["bf16_channels_last"]
        for term, label in (("total", "first-step loss"), ("self_supervised_shared_targets",
                                                           "self-supervised loss, shared targets")):
            rel = check[term]["bf16_vs_fp32_channels_last_rel_diff"]
            rows.append((f"{label}, bf16 vs fp32 (channels-last, same weights, inputs, seed)",
                         f"fp32 {fp32[term]:.5f}, bf16 {bf16[term]:.5f}",
                         f"relative difference {percent(rel)} (bf16 tolerance {percent(check['rtol'])})", NONE))
    return rows


def loader_rows(report: dict) -> list[Row]:
    step = report["step"]
    rows = [(f"segmenter step {step['segmenter']} {step['batch']}×{step['crop_px']}², {step['threads']} thread(s)",
             f"{num(step['step_s_best'])} s/step = {num(step['samples_per_s'])} samples/s", NONE,
             load_span(step["load_avg_1min_before"], step["load_avg_1min_after"]))]
    for case in report["cases"]:
        rows.append((f"training DataLoader, {case['workers']} worker(s)",
                     f"{num(case['samples_per_s'])} samples/s, first batch {num(case['first_batch_s'])} s",
                     f"loader/step {times(case['loader_over_step'])}",
                     load_span(case["load_avg_1min_before"], case["load_avg_1min_after"])))
    return rows


def sliding_window_rows(report: dict) -> list[Row]:
    return [(f"sliding-window inference {report['model']}, {report['tile_hw'][0]}×{report['tile_hw'][1]} tile, "
             f"{report['dtype']}, {report['threads']} thread(s)",
             f"{num(report['mpix_per_s'])} Mpix/s ({report['num_windows']} windows in {num(report['seconds'])} s)",
             NONE, load_span(report["load_average_1_5_15_before"][0], report["load_average_1_5_15_after"][0]))]


def pseudo_labels_rows(report: dict) -> list[Row]:
    crf = report["crf"]
    load = load_span(report["load_average_1_5_15_before"][0], report["load_average_1_5_15_after"][0])
    rows = []
    for pamr in report["pamr"]:
        shape = "×".join(str(d) for d in pamr["masks_shape"])
        ours = pamr["wsseg"]
        published = pamr.get("published")
        absolute = f"median {num(ours['median_ms'])} ms (fastest {num(ours['min_ms'])})"
        ratio = NONE
        if published:
            absolute += f"; published {num(published['median_ms'])} ms"
            ratio = f"{times(pamr['published_over_wsseg_median'])} faster than published"
        rows.append((f"PAMR {shape}, {pamr['num_iter']} iterations, {report['threads']} thread(s)", absolute, ratio,
                     load))
    rows.append((f"dense CRF {crf['crop_hw'][0]}², {crf['num_classes']} classes, {crf['n_iter']} iterations",
                 f"median {num(crf['median_ms'])} ms/crop (fastest {num(crf['min_ms'])})", NONE, load))
    return rows


def predict_geotiff_rows(report: dict) -> list[Row]:
    *sizes, summary = report["cases"]

    def size(case: dict) -> str:
        width, height = case["raster_px"]
        return f"{width:,}×{height:,}"

    rows = [(f"predict GeoTIFF {size(c)}, {c.get('precision', 'fp32')}, {c['torch_threads']} thread(s)",
             f"{num(c['mpix_per_s'])} Mpix/s, peak RSS {num(c['peak_rss_mib'])} MiB", NONE,
             load_span(c["load_before"][0], c["load_after"][0])) for c in sizes]
    rows.append((f"predict GeoTIFF peak memory, {size(sizes[-1])} vs {size(sizes[0])}",
                 f"{num(sizes[-1]['peak_rss_mib'])} vs {num(sizes[0]['peak_rss_mib'])} MiB",
                 f"{times(summary['peak_rss_ratio_largest_to_smallest'])} (limit {times(summary['limit'])})", NONE))
    return rows


def baseline_rows(report: dict) -> list[Row]:
    return [(f"{report['what']} ({report['config']})",
             f"mIoU {report['miou_mean']:.3f} ± {report['miou_std']:.3f} over {len(report['runs'])} seed(s)",
             NONE, NONE)]


def compile_rows(report: dict) -> list[Row]:
    return [(f"torch.compile, training step {c['model']} {c['batch']}×{c['crop_px']}², {c['precision']}, "
             f"{c['threads']} thread(s)",
             f"eager {num(c['eager_step_s'])} s, compiled {num(c['compiled_step_s'])} s (first compiled step "
             f"{num(c['compiled_first_step_s'])} s)", f"compiled {times(c['speedup_compiled'])} faster",
             NONE) for c in report["cases"]]


def scaling_rows(report: dict) -> list[Row]:
    measured, *estimates = report["cases"]
    one, many = measured["step_s_best"].items()
    rows = [(f"data-parallel step {measured['model']}, global batch {measured['global_batch']}×{measured['crop_px']}²: "
             f"{one[0]} × {measured['one_process_threads']} threads vs {many[0]} × 1 thread (gloo)",
             f"{num(one[1])} vs {num(many[1])} s/step", f"processes {times(measured['speedup_processes_over_threads'])}",
             load_span(measured["load_avg_1min_before"], measured["load_avg_1min_after"]))]
    rows += [(f"estimate: all-reduce of {e['model']} gradients over {e['gpus']} GPUs, {e['link']} "
              f"(assumed {num(e['assumed_bus_gb_s'])} GB/s)", f"{num(e['gradient_mib'])} MiB, "
              f"{num(1e3 * e['allreduce_s_per_step'])} ms/step", NONE, NONE) for e in estimates]
    return rows


def demo_rows(report: dict) -> list[Row]:
    return [(f"`make demo` from a fresh clone at {c['commit']}, install included (pip cache {c['pip_cache']})",
             f"install {num(c['install_s'])} s + demo {num(c['demo_s'])} s = {num(c['total_s'] / 60)} min; "
             f"task i mIoU {num(c['task_i_miou'])}, task ii {num(c['task_ii_miou'])}",
             f"{times(c['total_over_target'])} the 12-min target",
             load_span(c["load_avg_1min_before"], c["load_avg_1min_after"])) for c in report["cases"]]


RENDERERS: dict[str, Callable[[dict], list[Row]]] = {
    "machine": machine_rows, "models": models_rows, "single_stage": single_stage_rows, "loader": loader_rows,
    "sliding_window": sliding_window_rows, "pseudo_labels": pseudo_labels_rows,
    "predict_geotiff": predict_geotiff_rows, "compile": compile_rows, "scaling": scaling_rows,
    "baseline": baseline_rows, "demo": demo_rows,
}
# machine.json first: the other rows are read against it.
ORDER = list(RENDERERS)


def renderer_of(path: Path) -> Callable[[dict], list[Row]] | None:
    """The renderer of a benchmark's file, also of one saved under another machine's name
    (`single_stage_amd-epyc-avx512bf16.json`): the longest benchmark name it starts with."""
    stem = path.stem
    names = [name for name in RENDERERS if stem == name or stem.startswith(name + "_")]
    return RENDERERS[max(names, key=len)] if names else None


def machine_line(report: dict) -> str | None:
    machine = report.get("machine")
    if isinstance(machine, dict):  # common.machine_info
        return f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}"
    if machine is not None and "cpu_count" in report:  # the benchmarks that record platform.machine()
        return f"{machine}, {report['cpu_count']} cores, torch {report['torch']}"
    return None


def render(results: Path) -> str:
    """The markdown table of every result file in `results` that has a renderer, and below it
    the machine of each file and the files no renderer reads."""
    paths = sorted(results.glob("*.json"), key=lambda p: (
        ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.name))
    lines = ["| what | absolute | ratio | load (1 min) |", "|---|---|---|---|"]
    machines: dict[str, list[str]] = {}
    skipped = []
    for path in paths:
        if path.stem.startswith("study_"):
            continue  # a study's arms over split seeds: benchmarks/study_table.py tabulates them
        render_rows = renderer_of(path)
        if render_rows is None:
            skipped.append(path.name)
            continue
        report = json.loads(path.read_text())
        for what, absolute, ratio, load in render_rows(report):
            lines.append(f"| `{path.name}` {what} | {absolute} | {ratio} | {load} |")
        machines.setdefault(machine_line(report) or "machine not recorded", []).append(path.name)
    lines.append("")
    lines += [f"Machine of {', '.join(names)}: {machine}." for machine, names in machines.items()]
    if skipped:
        lines.append(f"Not tabulated: {', '.join(skipped)}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
