#!/usr/bin/env python
"""Train and evaluate wsseg tasks: `python run_training.py --task all --config configs/demo.yaml`.

Task i trains a segmenter on the N1 pixel-labelled tiles; task ii adds the N2 tiles' crop tags
through a single-stage weakly supervised model and its pseudo masks; `all` runs both on one
split and writes a comparison report. Multi-GPU: `torchrun --nproc_per_node 4 run_training.py ...`.
"""

import sys

from wsseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
