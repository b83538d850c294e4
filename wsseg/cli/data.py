"""The commands about what a run reads: check-data (a dataset's problems), synth (the synthetic
aerial dataset) and weights (the ImageNet weights configs name).
"""

from __future__ import annotations

import sys
from pathlib import Path

from wsseg.pipeline.config_files import load_config


def _check_data(args) -> int:
    """Every problem of the configured dataset, one line each (warnings marked), then a summary;
    exit code 1 if any problem (not counting warnings)."""
    from wsseg.pipeline.data_check import check_data

    result = check_data(load_config(args.config, args.overrides), split_path=args.split, tags_path=args.tags,
                        progress=sys.stderr.isatty())
    for problem in result.problems:
        print(f"{'' if problem.blocking else 'warning: '}{problem.line()}")
    print(result.summary())
    return 1 if result.blocking else 0


def _synth(args) -> int:
    from wsseg.datasets.synthetic_aerial import generate_synthetic_vaihingen

    generate_synthetic_vaihingen(Path(args.out), num_tiles=args.tiles, tile_px=tuple(args.size), seed=args.seed)
    print(f"wrote {args.tiles} synthetic tiles of {args.size[0]}×{args.size[1]} px in the Vaihingen layout "
          f"to {args.out}")
    return 0


def _weights(args) -> int:
    from wsseg.pipeline.weights import WEIGHTS, fetch_weights, weights_url

    if args.action == "list":
        for name, spec in WEIGHTS.items():
            print(f"{name:<9} {spec.file:<40} {spec.used_by}; from {weights_url(name)}")
        print("timm:<a timm model name>  a timm encoder's ImageNet weights, through timm's own download")
        return 0
    path, downloaded = fetch_weights(args.name)
    print(f"{args.name}: {'downloaded to' if downloaded else 'already there:'} {path}")
    return 0
