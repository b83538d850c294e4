"""What a step of the online arms costs beside a task-i step, as a ratio measured in one run.

The semi arm and task ii online (`weak.mode: online`) pair each batch of N1 crops with as many N2
crops: a teacher forward on their weak views without gradient, and a student forward and
backward on their strong views, besides task i's own forward and backward. This times the three
training steps as training runs them (`pipeline.semi.semi_loss` with an EMA teacher, the
segmenter of `--config`, its batch size, crop size and classes, AdamW, fp32, channels-last on
random inputs), interleaved step by step so that machine load hits all alike, and reports the
median step of each and the ratios to task i's. Data loading is left out: its own benchmark
(bench_loader.py) shows whether the workers keep up.

    python benchmarks/bench_online_step.py                                   # → results/online_step.json
    python benchmarks/bench_online_step.py --repeats 1 --warmup 0 --crop-px 64 --out /tmp/x.json  # smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script (run_all.py), only benchmarks/ is on the path.
sys.path.insert(0, str(REPO))

from benchmarks.common import load_avg, write_report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "online_step.json"
CONFIG = REPO / "configs" / "stanford_background.yaml"
NUM_CLASSES = 8


def steps(cfg, online_cfg, stage, num_classes: int, batch: int, crop_px: int):
    """The training steps of task i, the semi arm and task ii online, each a function of no argument."""
    import torch

    from wsseg.core.losses import weighted_cross_entropy
    from wsseg.datasets.tags import TAG_NEGATIVE, TAG_UNKNOWN
    from wsseg.datasets.unlabelled import NO_BOX
    from wsseg.pipeline.segmenter import build_model
    from wsseg.pipeline.semi import build_teacher, semi_loss

    generator = torch.Generator().manual_seed(0)

    def images():
        return torch.rand(batch, 3, crop_px, crop_px, generator=generator)

    masks = torch.randint(0, num_classes, (batch, crop_px, crop_px), generator=generator)
    # Half the N2 crops get a CutMix box, as `pipeline.semi.CUTMIX_P` 0.5 draws on average.
    boxes = torch.tensor([[0, 0, crop_px // 2, crop_px // 2] if i % 2 else list(NO_BOX) for i in range(batch)])
    tags = torch.full((batch, num_classes), TAG_UNKNOWN, dtype=torch.int8)
    tags[:, ::3] = TAG_NEGATIVE  # a third of the classes absent from each crop
    views = {"weak": images(), "strong": images(), "box": boxes}
    batch_i = (images(), masks, torch.ones(batch))
    batch_online = (*batch_i, views)
    batch_tagged = (*batch_i, {**views, "tag_targets": tags})

    def trainer(compute_loss_of, data):
        model = stage.prepare(build_model(cfg, num_classes, pretrained=False).train())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        compute_loss = compute_loss_of(model)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss, _ = compute_loss(model, data, 0)
            loss.backward()
            optimizer.step()
        return step

    def task_i_loss(model):
        def compute_loss(model, data, epoch):
            x, y, w = data
            x, y = stage.images_to_device(x), stage.to_device(y)
            return weighted_cross_entropy(model(x), y, None, stage.to_device(w)[:, None, None].expand_as(y)), {}
        return compute_loss

    def online_loss(online_cfg):
        def of(model):
            return semi_loss(online_cfg, stage, build_teacher(model), None, 255, progress=lambda: 1.0)
        return of

    return {"task_i": trainer(task_i_loss, batch_i),
            "semi": trainer(online_loss(cfg), batch_online),
            "task_ii_online": trainer(online_loss(online_cfg), batch_tagged)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--crop-px", type=int, help="default: the config's train.crop_px")
    parser.add_argument("--batch", type=int, help="default: the config's train.batch_size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from wsseg.core.stage import Stage
    from wsseg.pipeline.config_files import load_config

    cfg = load_config(args.config)
    online_cfg = load_config(args.config, ["weak.mode=online"])
    crop_px, batch = args.crop_px or cfg.train.crop_px, args.batch or cfg.train.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        stage = Stage(Path(tmp) / "bench", device="cpu", precision="fp32", channels_last=True)
        runs = steps(cfg, online_cfg, stage, NUM_CLASSES, batch, crop_px)
        load_before = load_avg()
        for step in runs.values():
            for _ in range(args.warmup):
                step()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, step in runs.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    cases = [{"arm": name, "step_s": [round(t, 4) for t in times[name]], "median_step_s": round(median[name], 4),
              "ratio_to_task_i": round(median[name] / median["task_i"], 3)} for name in runs]
    for case in cases:
        print(f"{case['arm']:>15}: {case['median_step_s']:.3f} s a step, {case['ratio_to_task_i']:.2f}× task i")
    write_report(args.out, "training step of the online arms against task i's (median of interleaved steps)", None,
                 cases, config=str(args.config.relative_to(REPO)) if args.config.is_relative_to(REPO) else args.config.name,
                 batch=batch, crop_px=crop_px, threads=torch.get_num_threads(), repeats=args.repeats,
                 load_average_before=load_before, load_average_after=load_avg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
