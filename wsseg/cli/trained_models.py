"""The commands that use a trained model: eval (a run checkpoint or a published model, on test
tiles), publish, predict and export.
"""

from __future__ import annotations

import sys
from pathlib import Path

from wsseg.cli.session import _setup_logging


def _eval(args) -> int:
    from wsseg.pipeline.release import locate_model

    location = locate_model(args.checkpoint)
    if location.kind == "checkpoint":
        return _eval_checkpoint(args, location.path)
    return _eval_release(args, location)


def _eval_checkpoint(args, checkpoint: Path) -> int:
    """A run checkpoint, on the test tiles of its run (or of --split)."""
    from wsseg.core.checkpoint import load_checkpoint
    from wsseg.datasets.splits import load_split
    from wsseg.pipeline.config import config_to_dict
    from wsseg.pipeline.config_files import apply_overrides, config_from_dict, saved_config_from_dict
    from wsseg.pipeline.data import Run, load_source
    from wsseg.pipeline.evaluation import evaluate_checkpoint

    state = load_checkpoint(checkpoint)
    saved = config_to_dict(saved_config_from_dict(state["config"]))
    cfg = config_from_dict(apply_overrides(saved, args.overrides))
    split_path = Path(args.split) if args.split else checkpoint.parent.parent / "split.json"
    if not split_path.exists():
        print(f"error: no split file {split_path}; pass --split", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else checkpoint.parent / f"eval-{checkpoint.stem}"
    _setup_logging(out)
    run = Run(cfg, load_source(cfg), load_split(split_path), run_dir=split_path.parent)
    metrics = evaluate_checkpoint(run, out, checkpoint, title=f"Evaluation of {checkpoint}")
    return _print_scores(metrics, out)


def _eval_release(args, location) -> int:
    """A published model, on the test tiles of the split it records (or of --split), in its
    training config's dataset (`--set data.root=...` where the data lives here)."""
    from wsseg.core.io import atomic_write_json
    from wsseg.datasets.splits import load_split
    from wsseg.pipeline.config import config_to_dict
    from wsseg.pipeline.config_files import apply_overrides, config_from_dict, saved_config_from_dict
    from wsseg.pipeline.data import Run, load_source
    from wsseg.pipeline.evaluation import check_classes, evaluate_model
    from wsseg.pipeline.release import load_release, read_release_meta

    meta = read_release_meta(location.path)
    trained = load_release(location.path, source=location.source)
    saved = config_to_dict(saved_config_from_dict(trained.config))
    cfg = config_from_dict(apply_overrides(saved, args.overrides))
    out = Path(args.out) if args.out else Path(f"eval-{meta.get('name') or location.path.name}")
    _setup_logging(out)
    if args.split:
        split = load_split(args.split)
    elif meta.get("split"):
        # The split it was tested on, recorded beside the report (and checked as any split file).
        split = load_split(atomic_write_json(out / "split.json", meta["split"]))
    else:
        print(f"error: {location.source} records no split; pass --split", file=sys.stderr)
        return 2
    source = load_source(cfg)
    check_classes(trained.class_names, source.classes.names, location.source)
    run = Run(cfg, source, split, run_dir=out)
    metrics = evaluate_model(run, out, trained.model, {"path": location.source},
                             title=f"Evaluation of {location.source}")
    return _print_scores(metrics, out)


def _print_scores(metrics: dict, out: Path) -> int:
    print(f"mIoU {metrics['miou']:.4f}  mean F1 {metrics['mean_f1']:.4f}  OA {metrics['overall_accuracy']:.4f}"
          f"  → {out}")
    return 0


def _publish(args) -> int:
    from wsseg.pipeline.publish import publish

    published = publish(args.checkpoint, args.out, name=args.name, force=args.force)
    print(f"wrote the release {published.name!r} to {published.folder}")
    for file_name, digest in published.sha256.items():
        print(f"sha256 {digest}  {file_name}")
    print("to share it: upload model.zip, then add this line to wsseg/checkpoints.yaml (or $WSSEG_REGISTRY)"
          + ("" if args.url else ", with its URL") + ":")
    print(f"  {published.registry_line(args.url)}")
    return 0


def _predict(args) -> int:
    from wsseg.core.distributed import choose_device
    from wsseg.pipeline.predict import predict_paths
    from wsseg.pipeline.predict_plan import PredictOptions, parse_bands, parse_tta, parse_value_range
    from wsseg.pipeline.release import resolve_checkpoint

    _setup_logging()  # the precision chosen, GeoTIFF warnings
    bands, tta, value_range = parse_bands(args.bands), parse_tta(args.tta), parse_value_range(args.value_range)
    try:
        device = choose_device(args.device)
    except RuntimeError as err:  # cuda asked for, none there
        raise ValueError(f"--device: {err}") from None
    trained = resolve_checkpoint(args.checkpoint, device)
    eval_cfg = trained.config.get("eval", {})

    def given_or_eval(value, key, default):
        return value if value is not None else eval_cfg.get(key, default)

    opts = PredictOptions(window_px=given_or_eval(args.window, "window_px", 512),
                          stride_px=given_or_eval(args.stride, "stride_px", 384),
                          batch_size=given_or_eval(args.batch_size, "batch_size", 4), block_px=args.block,
                          bands=bands, value_range=value_range, tta=tta, crf=args.crf,
                          probabilities=args.probabilities, force=args.force, precision=args.precision)
    plan = predict_paths(trained, args.inputs, args.out, opts, pattern=args.glob)
    print(f"predicted {len(plan)} image(s) with {args.checkpoint} → {args.out}")
    return 0


def _export(args) -> int:
    from wsseg.pipeline.export import export_model
    from wsseg.pipeline.release import resolve_checkpoint

    out = export_model(resolve_checkpoint(args.checkpoint, "cpu"), args.format, args.out, force=args.force)
    print(f"exported {args.checkpoint} as {args.format} → {out}")
    return 0
