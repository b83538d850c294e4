"""Tasks i and ii as a chain of stages, each a plain function of a `Run` and its folder.

    prepare_run         dataset on disk → TileSource, split.json          (pipeline.data)
    train_segmenter     N1 pixel labels (+ N2 pseudo masks in task ii) → segmenter → test metrics
    train_single_stage  N1 + N2 crop tags → single-stage weakly supervised model      (task ii)
                        (`weak.mode: offline`; online, task ii learns as semi does, under the tags)
    make_pseudo_masks   single-stage model → PAMR → CRF → thresholds → N2 pseudo masks (task ii);
                        a constant background that never wins there → retrained with it learned
    initial_segmenter   zoom-out only: sampled hypercolumns → FC classifier → 1×1 convs, where
                        its segmenter starts (pipeline.zoomout; one step at a time: tasks.run_zoomout_step)
    run_semi            N1 pixel labels + N2 images without tags (weak-to-strong consistency)
    run_arms            wires the stages of the arms asked (i, semi, ii, oracle) on one split, each
                        stage they share run once, and compares them when tasks i and ii are in

`wsseg train` and `wsseg zoomout` reach these stages through `pipeline.tasks` (`run_task`,
`run_zoomout_step`), `wsseg study` through `run_arms`.

A stage writes `done.json` when it finishes; a rerun of the chain with `resume` skips finished
stages and continues unfinished ones from their last checkpoint.

Under torchrun every process walks the same chain: all train and evaluate together, rank 0
alone writes files and makes the pseudo masks, and every process waits for it at the end of a
stage, so that all see the same finished stages and the same files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from wsseg.core.distributed import DistInfo, barrier, run_on_main
from wsseg.core.io import atomic_write_json
from wsseg.core.run_lock import run_folder_held
from wsseg.pipeline.comparison_report import write_comparison_report
from wsseg.pipeline.config import Config
from wsseg.pipeline.data import Run, crop_tags_of, prepare_run
from wsseg.pipeline.pseudo_masks import BackgroundRejected, make_pseudo_masks, pseudo_mask_samples
from wsseg.pipeline.segmenter import check_init_from, check_oracle_labels, train_segmenter
from wsseg.pipeline.weak import train_single_stage
from wsseg.pipeline.zoomout import initial_segmenter

log = logging.getLogger(__name__)

# The arms of a comparison, in the order they run: task i first, whose epochs the others train.
ARMS = ("i", "semi", "ii", "oracle")


def _stage_done(stage_dir: Path) -> dict | None:
    done = stage_dir / "done.json"
    return json.loads(done.read_text()) if done.exists() else None


def _finish_stage(run: Run, stage_dir: Path, result: dict, started: float | None = None) -> dict:
    """Write the stage's done.json; `started` (time.monotonic() when it began) adds its wall minutes."""
    if started is not None:
        result = {**result, "minutes": (time.monotonic() - started) / 60}
    if run.dist.is_main:
        atomic_write_json(stage_dir / "done.json", result)
    # No process looks for this done.json before it exists: one that did would run the stage alone.
    barrier(run.dist)
    return result


def run_task_i(run: Run) -> dict:
    stage_dir = run.run_dir / "task_i"
    if (done := _stage_done(stage_dir)) is not None:
        log.info(f"task i already finished in {stage_dir}: mIoU {done['miou']:.4f}")
        return done
    started = time.monotonic()
    metrics = train_segmenter(run, stage_dir, title="Task i: pixel labels only (N1)",
                              init_checkpoint=initial_segmenter(run))
    log.info(f"task i: test mIoU {metrics.get('miou', float('nan')):.4f}")
    return _finish_stage(run, stage_dir, metrics, started)


def run_semi(run: Run) -> dict:
    """The tag-free arm: task i's segmenter, steps and N1 batches, plus the N2 images without their
    tags (`pipeline.semi`). It trains as many epochs as task i did (run first if it has not)."""
    return _online_stage(run, "semi", "Semi: N1 pixel labels + N2 images without tags")


def _online_stage(run: Run, name: str, title: str, crop_tags=None) -> dict:
    """A stage that learns N2 online (`train_segmenter(online=True)`): the semi arm (`name` semi), or
    task ii (`task ii`) with each N2 crop's targets restricted by `crop_tags`; folder semi/ or task_ii/."""
    stage_dir = run.run_dir / name.replace(" ", "_")
    if (done := _stage_done(stage_dir)) is not None:
        log.info(f"{name} already finished in {stage_dir}: mIoU {done['miou']:.4f}")
        return done
    _task_i_first_under_a_budget(run, name)
    started = time.monotonic()
    metrics = train_segmenter(run, stage_dir, title=title, init_checkpoint=initial_segmenter(run),
                              epochs=epochs_of_task_i(run), online=True, crop_tags=crop_tags)
    log.info(f"{name}: test mIoU {metrics.get('miou', float('nan')):.4f}")
    return _finish_stage(run, stage_dir, metrics, started)


def epochs_of_task_i(run: Run) -> int | None:
    """The epochs task i trained, once it has finished (None before): task ii and the oracle train
    as many, so that the comparison is at equal steps also where `train.max_minutes` cut them."""
    done = _stage_done(run.run_dir / "task_i")
    epochs = done.get("checkpoint", {}).get("epochs_trained") if done else None
    if epochs is not None and epochs != run.cfg.train.epochs:
        log.info(f"task i trained {epochs} of {run.cfg.train.epochs} epochs within train.max_minutes: "
                 f"task ii and the oracle train {epochs} too")
    return epochs


def run_task_ii(run: Run) -> tuple[dict, dict | None]:
    """Task ii's metrics and the quality report of its pseudo masks (None in `weak.mode: online`,
    which makes none)."""
    cfg, run_dir = run.cfg, run.run_dir
    crop_tags = crop_tags_of(run)
    if cfg.weak.mode == "online":
        return _online_task_ii(run, crop_tags), None
    fusion_segmenter = None
    if cfg.weak.pseudo.segmenter_weight > 0:
        if _stage_done(run_dir / "task_i") is None:
            log.info("task ii uses task i's segmenter (weak.pseudo.segmenter_weight): running task i first")
            run_task_i(run)
        fusion_segmenter = run_dir / "task_i" / "best.pt"
    return _offline_task_ii(run, crop_tags, fusion_segmenter, f"Task ii: N1 pixel labels + N2 {run.tags_title}")


def _online_task_ii(run: Run, crop_tags) -> dict:
    """Task ii as the semi arm learns, each N2 crop's targets restricted by its tags: no
    single-stage model, no pseudo masks."""
    return _online_stage(run, "task ii",
                         f"Task ii: N1 pixel labels + N2 images under their {run.tags_title} (online)", crop_tags)


def _task_i_first_under_a_budget(run: Run, what: str) -> None:
    """Under `train.max_minutes` task i's epochs are known only once it has run: run it first,
    so that `what` trains as many."""
    if run.cfg.train.max_minutes is not None and _stage_done(run.run_dir / "task_i") is None:
        log.info(f"{what} trains as many epochs as task i within train.max_minutes: running task i first")
        run_task_i(run)


def _offline_task_ii(run: Run, crop_tags, fusion_segmenter: Path | None, title: str) -> tuple[dict, dict]:
    pm_dir, stage_dir = run.run_dir / "pseudo_masks", run.run_dir / "task_ii"
    if (quality := _stage_done(pm_dir)) is None:
        started = time.monotonic()
        quality = _finish_stage(run, pm_dir, _weak_stage(run, crop_tags, pm_dir, fusion_segmenter), started)
    if (done := _stage_done(stage_dir)) is not None:
        log.info(f"{title}: already finished in {stage_dir}: mIoU {done['miou']:.4f}")
        return done, quality
    # A zoom-out segmenter starts from its converted N1 classifier.
    init = initial_segmenter(run)
    started = time.monotonic()
    metrics = train_segmenter(run, stage_dir, pseudo_masks={t: pm_dir / f"{t}.png" for t in run.split.tagged},
                              init_checkpoint=init, title=title, epochs=epochs_of_task_i(run))
    log.info(f"{stage_dir.relative_to(run.run_dir)}: test mIoU {metrics.get('miou', float('nan')):.4f}")
    return _finish_stage(run, stage_dir, metrics, started), quality


def _weak_stage(run: Run, crop_tags, pm_dir: Path, segmenter_checkpoint: Path | None) -> dict:
    """Single-stage model → pseudo masks. A constant background channel that never wins on the
    calibration tiles is replaced by a model with every class learned, trained in
    `single_stage_learned/` (the reason in `single_stage/background_rejected.json`)."""
    ss_dir, rejected_file = run.run_dir / "single_stage", run.run_dir / "single_stage" / "background_rejected.json"
    if rejected_file.exists():
        note = json.loads(rejected_file.read_text())
    else:
        if _stage_done(ss_dir) is None:
            train_single_stage(run, crop_tags, ss_dir)
            _finish_stage(run, ss_dir, {"checkpoint": "last.pt"})
        report, note = _pseudo_masks_on_main(run, crop_tags, ss_dir / "last.pt", pm_dir, segmenter_checkpoint,
                                             rejected_file=rejected_file)
        if report is not None:
            return report
    learned = _with_learned_background(run)
    learned_dir = run.run_dir / "single_stage_learned"
    if _stage_done(learned_dir) is None:
        train_single_stage(learned, crop_tags, learned_dir)
        _finish_stage(run, learned_dir, {"checkpoint": "last.pt"})
    report, _ = _pseudo_masks_on_main(learned, crop_tags, learned_dir / "last.pt", pm_dir, segmenter_checkpoint,
                                      background_rejected=note)
    return report


def _pseudo_masks_on_main(run: Run, crop_tags, checkpoint: Path, pm_dir: Path, segmenter_checkpoint: Path | None,
                          rejected_file: Path | None = None,
                          background_rejected: dict | None = None) -> tuple[dict | None, dict | None]:
    """Rank 0 makes the pseudo masks (`make_pseudo_masks`) while the other processes wait: the
    masks are files, and their calibration decides settings once, tile after tile.

    Every process gets the outcome: (the quality report, None), or, when the constant background
    is rejected, (None, the rejection note), which rank 0 also writes to `rejected_file`. Without
    `rejected_file` (a model with every class learned) a rejection is raised."""
    def make() -> tuple[dict | None, dict | None]:
        try:
            return make_pseudo_masks(run, crop_tags, checkpoint, pm_dir, segmenter_checkpoint,
                                     background_rejected=background_rejected), None
        except BackgroundRejected as rejection:
            if rejected_file is None:
                raise
            log.warning(f"single-stage: {rejection}; retraining it with every class learned "
                        f"(weak.single_stage.constant_background: null)")
            atomic_write_json(rejected_file, rejection.note)
            return None, rejection.note

    return run_on_main(make, run.dist)


def _with_learned_background(run: Run) -> Run:
    cfg = run.cfg
    single_stage = dataclasses.replace(cfg.weak.single_stage, constant_background=None)
    return dataclasses.replace(run, cfg=dataclasses.replace(cfg, weak=dataclasses.replace(cfg.weak,
                                                                                         single_stage=single_stage)))


def run_oracle(run: Run) -> dict:
    """The segmenter trained like task ii's but on the true N2 labels: how far task ii could go."""
    stage_dir = run.run_dir / "oracle"
    if (done := _stage_done(stage_dir)) is not None:
        return done
    started = time.monotonic()
    metrics = train_segmenter(run, stage_dir, oracle=True, title="Oracle: N1 + N2 pixel labels (experiments only)",
                              init_checkpoint=initial_segmenter(run), epochs=epochs_of_task_i(run))
    log.info(f"oracle: test mIoU {metrics.get('miou', float('nan')):.4f}")
    return _finish_stage(run, stage_dir, metrics, started)


def check_arms(arms) -> tuple[str, ...]:
    """The arms asked, in the order they run (`ARMS`); an unknown or repeated one is a ValueError naming it."""
    arms = list(arms)
    for arm in arms:
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r} ({', '.join(ARMS)})")
        if arms.count(arm) > 1:
            raise ValueError(f"arm {arm!r} is asked twice")
    if not arms:
        raise ValueError(f"no arm asked ({', '.join(ARMS)})")
    return tuple(arm for arm in ARMS if arm in arms)


def run_arms(cfg: Config, arms, run_dir: Path, resume: bool = False, dist: DistInfo = DistInfo()) -> dict:
    """Run the arms asked (`ARMS`: i, semi, ii, oracle) on one split into `run_dir`.

    The stages they share run once: task i's segmenter (whose epochs semi, task ii and the oracle
    train), the single-stage model and the pseudo masks. Returns {"arms": {arm: its test metrics
    (the done.json of its stage; task ii's last round)}, "pseudo_masks": task ii's pseudo-mask
    report or None, "comparison": the comparison report's dict when tasks i and ii are both in}."""
    arms = check_arms(arms)
    with run_folder_held(run_dir, dist.is_main):
        return _run_arms(cfg, arms, run_dir, resume, dist)


def _run_arms(cfg: Config, arms: tuple[str, ...], run_dir: Path, resume: bool, dist: DistInfo) -> dict:
    run = prepare_run(cfg, run_dir, resume, dist, weak="ii" in arms)
    check_init_from(run)
    if "oracle" in arms:
        check_oracle_labels(run)
    results, quality = {}, None
    if "i" in arms:
        results["i"] = run_task_i(run)
    else:
        _task_i_first_under_a_budget(run, ", ".join(arms))
    if "semi" in arms:
        results["semi"] = run_semi(run)
    if "ii" in arms:
        results["ii"], quality = run_task_ii(run)
    if "oracle" in arms:
        results["oracle"] = run_oracle(run)
    outcome = {"arms": results, "pseudo_masks": quality, "comparison": None}
    if not dist.is_main or not {"i", "ii"} <= set(arms):
        return outcome
    classes = run.source.classes
    samples = [] if quality is None else pseudo_mask_samples(run.source, run.split, run_dir / "pseudo_masks",
                                                             cfg.eval.num_triptychs)
    outcome["comparison"] = write_comparison_report(run_dir, results["i"], results["ii"], quality, classes.names,
                                                    classes.palette, samples, oracle=results.get("oracle"),
                                                    semi=results.get("semi"))
    return outcome
