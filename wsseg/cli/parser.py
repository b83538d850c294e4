"""The command line's arguments: a subcommand each, its options and their help.

Apart from the commands, so that each command's module holds what it does and this one what
`wsseg --help` says.
"""

from __future__ import annotations

import argparse


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["i", "semi", "ii", "all"], default="i",
                        help="i: pixel labels only; semi: pixel labels + the tagged images without their tags; "
                             "ii: pixel labels + tags; all: the three, compared")
    parser.add_argument("--config", required=True, help="YAML file in configs/")
    parser.add_argument("--out", help="run folder (default: runs/<config name>-<time>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out: finished stages are kept, others resume from last.pt")
    parser.add_argument("--split-seeds", help="comma-separated split seeds: repeat --task all and report mean ± std")
    parser.add_argument("--oracle", action="store_true",
                        help="with --task all: also train on N1 + N2 with N2's true pixel labels (experiments "
                             "only) and report the gap task ii closes")
    parser.add_argument("--init-from", metavar="MODEL",
                        help="start the segmenters from a trained model: a checkpoint .pt, a stage or `wsseg "
                             "publish` folder, the URL of its model.zip or a registry name (model.init_from)")
    parser.add_argument("--reset-head", action="store_true",
                        help="with --init-from: take every weight but the classifier's, for other classes "
                             "(model.reset_head)")


def _add_predict_args(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("--checkpoint", required=True, help="a run checkpoint, e.g. RUN/task_i/best.pt")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (PNG, JPEG, TIFF), folders, GeoTIFFs")
    pr.add_argument("--out", required=True, help="output folder (folder inputs keep their sub-folders)")
    pr.add_argument("--glob", help="file pattern in folders, searched recursively (default: every image suffix)")
    pr.add_argument("--bands", help="three 1-based band indices the model takes, e.g. 1,2,3 or 4,1,2 for NIR-R-G "
                                    "(default 1,2,3; one band as grey)")
    pr.add_argument("--value-range", default="auto", help="LOW,HIGH input values mapped to 0..1 (default auto: "
                                                         "÷255 for 8-bit, a 2–98%% percentile stretch otherwise)")
    pr.add_argument("--tta", help="test-time augmentation, e.g. flip or flip,vflip,scales=0.75,1,1.25")
    pr.add_argument("--crf", action="store_true", help="dense CRF on the probabilities (ordinary images only)")
    pr.add_argument("--probabilities", action="store_true",
                    help="also write the per-class probabilities (.npy; float32 GeoTIFF for GeoTIFFs)")
    pr.add_argument("--window", type=int, help="window px (default: the checkpoint's eval.window_px)")
    pr.add_argument("--stride", type=int, help="stride px (default: the checkpoint's eval.stride_px)")
    pr.add_argument("--batch-size", type=int, help="windows per forward pass (default: eval.batch_size)")
    pr.add_argument("--block", type=int, default=2048, help="GeoTIFF block px read and written at a time")
    pr.add_argument("--device", default="auto", help="auto, cpu or cuda")
    pr.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="auto (default): the faster of fp32 and 16-bit autocast on this device, timed when "
                         "prediction starts; fp16 on CUDA only")
    pr.add_argument("--force", action="store_true", help="overwrite existing outputs")


def _add_export_args(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("--checkpoint", required=True, help="a run checkpoint, e.g. RUN/task_i/best.pt")
    ex.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--force", action="store_true", help="overwrite an existing file")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `wsseg`: its subcommands, their options and help."""
    parser = argparse.ArgumentParser(prog="wsseg", description="weakly semi-supervised semantic segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_args(sub.add_parser("train", help="train and evaluate task i, ii or both"))
    st = sub.add_parser("study", help="the arms of the comparison asked (i, semi, ii, oracle) over split seeds, "
                                      "stages they share run once, at one precision: study.json/.md")
    st.add_argument("--config", required=True, help="YAML file in configs/")
    st.add_argument("--arms", default="i,semi,ii",
                    help="comma-separated arms among i, semi, ii, oracle (default i,semi,ii); semi, ii and the "
                         "oracle train as many epochs as task i, which runs once per seed for them")
    st.add_argument("--split-seeds", default="0,1,2", help="comma-separated split seeds (default 0,1,2)")
    st.add_argument("--out", required=True, help="study folder: split_seed_<s>/ run folders, study.json, study.md")
    st.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value in every run (repeatable)")
    st.add_argument("--resume", action="store_true",
                    help="continue the study in --out: finished stages are kept, others resume from last.pt")
    st.add_argument("--allow-auto-precision", action="store_true",
                    help="accept train.precision auto, which may choose differently from run to run")
    st.add_argument("--results", metavar="FILE",
                    help="also copy study.json to FILE, e.g. benchmarks/results/study_<name>.json "
                         "(benchmarks/study_table.py tabulates those)")
    sw = sub.add_parser("sweep", help="train a task once per combination of config values, then tabulate them "
                                      "(rerun: finished combinations are skipped)")
    sw.add_argument("--config", required=True, help="YAML file in configs/")
    sw.add_argument("--grid", action="append", default=[], required=True, metavar="KEY=V1,V2,...",
                    help="a config key and its values, parsed as --set values (repeatable: the cartesian product)")
    sw.add_argument("--out", required=True, help="sweep folder: one run folder per combination, sweep.md/.json/.png")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value in every combination (repeatable)")
    sw.add_argument("--task", choices=["i", "semi", "ii", "all"], default="i", help="the task each combination runs")
    ev = sub.add_parser("eval", help="re-evaluate a saved checkpoint on the test tiles of its run")
    ev.add_argument("--checkpoint", required=True,
                    help="a run checkpoint .pt, a stage or release folder, a model.zip, its URL or a registry name")
    ev.add_argument("--split", help="split.json (default: the one in the checkpoint's run folder)")
    ev.add_argument("--out", help="report folder (default: beside the checkpoint)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override the checkpoint's config, e.g. --set data.root=/data/vaihingen")
    pu = sub.add_parser("publish", help="write a release folder of a trained model: weights without pickle, "
                                        "model.json, model card, model.zip")
    pu.add_argument("checkpoint", help="a stage folder (RUN/task_ii, RUN/task_i: its best.pt) or a checkpoint .pt")
    pu.add_argument("--out", required=True, help="the release folder to write")
    pu.add_argument("--name", help="the model's name in its card and registry line (default: the --out folder's)")
    pu.add_argument("--force", action="store_true", help="write over a non-empty --out")
    pu.add_argument("--url", help="where model.zip will be served, for the registry line it prints")
    sy = sub.add_parser("synth", help="write the synthetic aerial dataset in the Vaihingen layout")
    sy.add_argument("out", help="output root (gets top/, gts_for_participants/, gts_eroded_for_participants/)")
    sy.add_argument("--tiles", type=int, default=33, help="number of tiles (default 33, the real area numbers)")
    sy.add_argument("--size", type=int, nargs=2, default=[384, 384], metavar=("H", "W"), help="tile size in px")
    sy.add_argument("--seed", type=int, default=0)
    cd = sub.add_parser("check-data", help="check a dataset before training: every problem, one line each "
                                           "(exit code 1 if any)")
    cd.add_argument("--config", required=True, help="YAML file in configs/ (its data and split sections)")
    cd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set data.root=/data/vaihingen (repeatable)")
    cd.add_argument("--split", help="also check a split file (a run's split.json) against the data")
    cd.add_argument("--tags", help="also check a crop tag file (a run's crop_tags.json) against the data")
    _add_predict_args(sub.add_parser("predict", help="segment new images, folders and GeoTIFFs with a checkpoint"))
    _add_export_args(sub.add_parser("export", help="export a checkpoint as ONNX, TorchScript or safetensors"))
    we = sub.add_parser("weights", help="the ImageNet weights configs name: fetch them into the cache before a run "
                                        "needs them ($WSSEG_WEIGHTS_URL: a mirror)")
    weights_actions = we.add_subparsers(dest="action", required=True)
    fetch = weights_actions.add_parser("fetch", help="download NAME once, check it, print where it went")
    fetch.add_argument("name", metavar="NAME", help="resnet38, vgg16, vgg16_bn, vgg11, vgg11_bn, or timm:<a timm "
                                                    "model name> (`wsseg weights list`)")
    weights_actions.add_parser("list", help="the names wsseg fetches, their files and what uses them")
    zo = sub.add_parser("zoomout", help="the zoom-out model's steps one at a time (model.name: zoomout): sample "
                                        "hypercolumns, fit the FC classifier, dense fine-tuning and task i's report")
    zo.add_argument("step", choices=["sample", "fit", "dense"],
                    help="sample: N1 pixels → RUN/zoomout/samples; fit: → RUN/zoomout/classifier; dense: FC → 1×1 "
                         "conv, fine-tuned on N1 crops → RUN/task_i")
    zo.add_argument("--config", required=True, help="YAML file in configs/ (model.name: zoomout)")
    zo.add_argument("--out", required=True, help="the run folder, the same for the three steps")
    zo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (repeatable)")
    zo.add_argument("--resume", action="store_true", help="continue this step from what it left in --out")
    return parser
