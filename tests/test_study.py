"""`wsseg study`: the arms asked over split seeds, stages shared by arms trained once, a killed
study resumed without redoing a finished stage, and study.json's numbers those of the stages."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import wsseg.pipeline.chain as chain
import wsseg.pipeline.pseudo_masks as pseudo_masks
from test_run_training import tiny_config
from wsseg.cli import main
from wsseg.core import report
from wsseg.core.metrics import gap_closed
from wsseg.core.typed import ConfigError
from wsseg.pipeline.config_files import load_config
from wsseg.pipeline.study import check_precision


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small gain nothing from a second thread, and on cores shared with other jobs
    each op waits for it: inference of the single-stage model took 1.5 s a tile with two threads
    and 10 ms with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def constant_background_kept():
    """The tiny single-stage model never finds clutter: keep its constant channel (also for the
    module's study fixture)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pseudo_masks, "REJECT_BACKGROUND_BELOW_RECALL", 0.0)
        yield


def study_config(tmp_path: Path) -> Path:
    """Models of a few thousand weights on 64 px tiles, two steps an epoch: a second or two a stage."""
    return tiny_config(
        tmp_path, tmp_path / "data",
        data={"options": {"num_tiles": 8, "tile_px": [64, 64], "seed": 3}},
        split={"n_labelled": 2, "n_tagged": 3, "n_val": 1},
        model={"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        train={"epochs": 2, "iters_per_epoch": 2, "batch_size": 2, "crop_px": 32, "optimizer": "adam",
               "schedule": "constant", "workers": 0, "precision": "fp32", "channels_last": False},
        eval={"window_px": 64, "stride_px": 64, "batch_size": 2, "num_triptychs": 0},
        weak={"tag_crop_px": 32,
              "single_stage": {"backbone": "resnet38", "width": 0.0625, "epochs": 1, "iters_per_epoch": 2,
                               "batch_size": 2, "crop_px": 32, "self_supervised_from_epoch": 2},
              "pseudo": {"scales": [1.0], "use_pamr": False, "crf": False}})


@contextlib.contextmanager
def counted_stages(stop_at: str | None = None):
    """Record the stage folders (relative to the study folder) that train, in order; raise
    KeyboardInterrupt (Ctrl-C, a kill the CLI reports with its resume command) where one ends in `stop_at`."""
    trained: list[str] = []
    real_segmenter, real_single_stage = chain.train_segmenter, chain.train_single_stage

    def name(stage_dir: Path) -> str:
        return f"{stage_dir.parent.name}/{stage_dir.name}"

    def segmenter(run, stage_dir, *args, **kwargs):
        if stop_at is not None and name(stage_dir) == stop_at:
            raise KeyboardInterrupt
        trained.append(name(stage_dir))
        return real_segmenter(run, stage_dir, *args, **kwargs)

    def single_stage(run, crop_tags, stage_dir):
        trained.append(name(stage_dir))
        return real_single_stage(run, crop_tags, stage_dir)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chain, "train_segmenter", segmenter)
        mp.setattr(chain, "train_single_stage", single_stage)
        yield trained


def no_figures(monkeypatch) -> None:
    # The report's figures take most of a tiny run's time and are not what these tests are about.
    for figure in ("plot_class_bars", "plot_confusion", "plot_curves", "plot_triptych"):
        monkeypatch.setattr(report, figure, lambda path, *args, **kwargs: path)


def done(path: Path) -> dict:
    return json.loads((path / "done.json").read_text())


def finished_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.name in ("done.json", "best.pt", "last.pt")}


@pytest.fixture(scope="module")
def killed_study(tmp_path_factory):
    """A study of arms i and semi over split seeds 0 and 1, killed as seed 1's semi stage starts,
    then continued with --resume."""
    tmp = tmp_path_factory.mktemp("study")
    config, out, results = study_config(tmp), tmp / "study", tmp / "results" / "study_tiny.json"
    command = ["study", "--config", str(config), "--arms", "semi,i", "--split-seeds", "0,1", "--out", str(out),
               "--results", str(results)]
    with pytest.MonkeyPatch.context() as mp:
        no_figures(mp)
        stderr = io.StringIO()
        with counted_stages(stop_at="split_seed_1/semi") as first, contextlib.redirect_stderr(stderr):
            first_code = main(command)
        before, reported_after_kill = finished_files(out), (out / "study.json").exists()
        again = io.StringIO()
        with contextlib.redirect_stderr(again):
            rerun_code = main(command)  # without --resume
        with counted_stages() as resumed:
            resume_code = main([*command, "--resume"])
    return {"out": out, "results": results, "first_code": first_code, "stderr": stderr.getvalue(), "first": first,
            "before": before, "reported_after_kill": reported_after_kill, "rerun_code": rerun_code,
            "rerun_stderr": again.getvalue(), "resume_code": resume_code, "resumed": resumed}


def test_a_killed_study_resumes_without_redoing_a_finished_stage(killed_study):
    out = killed_study["out"]
    assert killed_study["first_code"] == 130
    assert f"--split-seeds 0,1 --out {out} --resume" in killed_study["stderr"]
    # Task i once per seed, before semi, which reuses it; the kill came as seed 1's semi started.
    assert killed_study["first"] == ["split_seed_0/task_i", "split_seed_0/semi", "split_seed_1/task_i"]
    assert not killed_study["reported_after_kill"]
    assert killed_study["rerun_code"] == 2
    assert "already holds a study" in killed_study["rerun_stderr"] and "--resume" in killed_study["rerun_stderr"]
    # --resume trains only the missing stage and leaves every finished one as it was.
    assert killed_study["resume_code"] == 0
    assert killed_study["resumed"] == ["split_seed_1/semi"]
    after = finished_files(out)
    assert {k: v for k, v in after.items() if k in killed_study["before"]} == killed_study["before"]
    assert set(after) - set(killed_study["before"]) == {f"split_seed_1/semi/{n}" for n in ("done.json", "best.pt",
                                                                                              "last.pt")}


def test_study_reports_each_arm_per_seed_with_mean_and_std(killed_study):
    out = killed_study["out"]
    study = json.loads((out / "study.json").read_text())
    assert study["arms"] == ["i", "semi"] and study["split_seeds"] == [0, 1]
    assert study["config"] == "tiny.yaml" and study["dataset"] == "synthetic_vaihingen" and study["overrides"] == []
    assert study["precision"] == {"train.precision": "fp32"}
    assert study["machine"]["cores"] >= 1 and study["date"] and set(study["git"]) == {"commit", "dirty"}
    splits = [json.loads((out / f"split_seed_{s}" / "split.json").read_text()) for s in (0, 1)]
    assert splits[0]["labelled"] != splits[1]["labelled"]
    for arm, stage in (("i", "task_i"), ("semi", "semi")):
        dones = [done(out / f"split_seed_{s}" / stage) for s in (0, 1)]
        result = study["results"][arm]
        assert result["miou"]["per_seed"] == [d["miou"] for d in dones]
        assert result["miou"]["mean"] == pytest.approx(np.mean([d["miou"] for d in dones]))
        assert result["miou"]["std"] == pytest.approx(np.std([d["miou"] for d in dones], ddof=1))
        assert result["minutes"]["per_seed"] == [d["minutes"] for d in dones]
        building = [d["per_class"]["building"]["iou"] for d in dones]
        assert result["per_class"]["building"]["per_seed"] == building
        assert result["per_class"]["building"]["std"] == pytest.approx(np.std(building, ddof=1))
        assert result["epochs_trained"] == [2, 2]
    semi_minus_i = [s - i for s, i in zip(study["results"]["semi"]["miou"]["per_seed"],
                                          study["results"]["i"]["miou"]["per_seed"])]
    difference = study["differences"]["semi_minus_i"]
    assert list(study["differences"]) == ["semi_minus_i"] and "gap_closed" not in study
    assert difference["miou"]["per_seed"] == pytest.approx(semi_minus_i)
    assert difference["miou"]["std"] == pytest.approx(np.std(semi_minus_i, ddof=1))
    md = (out / "study.md").read_text()
    assert "| arm | seed 0 | seed 1 | mean ± std | minutes | epochs |" in md
    assert "semi − i (what the N2 images bought)" in md and "## Per-class IoU (mean ± std)" in md
    # No task ii: no comparison report.
    assert not (out / "split_seed_0" / "comparison.md").exists()
    assert json.loads(killed_study["results"].read_text()) == study


def test_every_arm_shares_task_i_and_the_single_stage_model(tmp_path, monkeypatch):
    no_figures(monkeypatch)
    config, out = study_config(tmp_path), tmp_path / "study"
    with counted_stages() as trained:
        assert main(["study", "--config", str(config), "--arms", "oracle,ii,i,semi", "--split-seeds", "0,1",
                     "--out", str(out), "--set", "train.epochs=1", "--set", "weak.single_stage.iters_per_epoch=1"]) == 0
    # Each stage trains once per seed, in the chain's order, whatever the order the arms were given in.
    per_seed = ["task_i", "semi", "single_stage", "task_ii", "oracle"]
    assert trained == [f"split_seed_{s}/{stage}" for s in (0, 1) for stage in per_seed]
    study = json.loads((out / "study.json").read_text())
    assert study["arms"] == ["i", "semi", "ii", "oracle"]
    assert set(study["precision"]) == {"train.precision"}
    assert study["overrides"] == ["train.epochs=1", "weak.single_stage.iters_per_epoch=1"]
    assert list(study["differences"]) == ["semi_minus_i", "ii_minus_i", "ii_minus_semi"]
    for s, seed in enumerate((0, 1)):
        folder = out / f"split_seed_{seed}"
        i, semi, ii, oracle, masks = (done(folder / n) for n in ("task_i", "semi", "task_ii", "oracle", "pseudo_masks"))
        assert (folder / "comparison.md").is_file()
        assert json.loads((folder / "comparison.json").read_text())["oracle"] == oracle
        assert study["results"]["ii"]["miou"]["per_seed"][s] == ii["miou"]
        assert study["results"]["ii"]["minutes"]["per_seed"][s] == pytest.approx(masks["minutes"] + ii["minutes"])
        assert study["results"]["ii"]["weak_stage_minutes"]["per_seed"][s] == masks["minutes"]
        assert study["differences"]["ii_minus_semi"]["miou"]["per_seed"][s] == pytest.approx(ii["miou"] - semi["miou"])
        assert study["differences"]["ii_minus_i"]["miou"]["per_seed"][s] == pytest.approx(ii["miou"] - i["miou"])
        gap = gap_closed(i["miou"], ii["miou"], oracle["miou"])
        assert study["gap_closed"]["miou"]["per_seed"][s] == (None if np.isnan(gap) else pytest.approx(gap))
        # Semi, task ii and the oracle train as many epochs as task i.
        assert {a["checkpoint"]["epochs_trained"] for a in (i, semi, ii, oracle)} == {1}
    md = (out / "study.md").read_text()
    assert "ii − semi (what the tags bought)" in md and "gap closed (ii − i) / (oracle − i)" in md
    assert "[seed 1](split_seed_1/comparison.md)" in md and "weak stage (single-stage model, pseudo masks)" in md


def test_auto_precision_is_refused_before_anything_runs(tmp_path, capsys):
    config, out = study_config(tmp_path), tmp_path / "study"
    assert main(["study", "--config", str(config), "--arms", "i,semi", "--out", str(out),
                 "--set", "train.precision=auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.precision is auto") and "--allow-auto-precision" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    # Every model of the run, the single-stage one included, trains at train.precision.
    assert check_precision(load_config(config)) == {"train.precision": "fp32"}
    auto = load_config(config, ["train.precision=auto"])
    with pytest.raises(ConfigError, match="train.precision is auto"):
        check_precision(auto)
    assert check_precision(auto, allow_auto=True) == {"train.precision": "auto"}


@pytest.mark.parametrize("option, value, said", [
    ("--arms", "i,iii", "error: --arms: unknown arm 'iii' (i, semi, ii, oracle)"),
    ("--arms", "i,semi,i", "error: --arms: arm 'i' is asked twice"),
    ("--split-seeds", "0,one", "error: --split-seeds: 'one' is not an integer split seed"),
    ("--split-seeds", "0,1,0", "error: --split-seeds: split seed 0 is given twice"),
    ("--results", "results.json", "error: --results results.json: name it study_<name>.json"),
])
def test_bad_options_are_one_error_line(tmp_path, capsys, option, value, said):
    out = tmp_path / "study"
    assert main(["study", "--config", str(study_config(tmp_path)), "--out", str(out), option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(said) and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("max_minutes, ran", [(None, ["semi", "oracle"]), (2.0, ["i", "semi", "oracle"])])
def test_arms_without_task_i_run_it_first_where_its_epochs_are_needed(tmp_path, monkeypatch, max_minutes, ran):
    """Under train.max_minutes task i's epochs are known only once it has run, and the other arms
    train as many: it runs first although not asked (and is not reported)."""
    from types import SimpleNamespace

    cfg = load_config(study_config(tmp_path), [f"train.max_minutes={'null' if max_minutes is None else max_minutes}"])
    order = []
    monkeypatch.setattr(chain, "prepare_run", lambda cfg, run_dir, *args, **kwargs: SimpleNamespace(cfg=cfg,
                                                                                                    run_dir=run_dir))
    for name in ("check_init_from", "check_oracle_labels"):
        monkeypatch.setattr(chain, name, lambda run: None)
    for arm, stage in (("i", "run_task_i"), ("semi", "run_semi"), ("oracle", "run_oracle")):
        monkeypatch.setattr(chain, stage, lambda run, arm=arm: order.append(arm) or {"miou": 0.5})
    outcome = chain.run_arms(cfg, ["oracle", "semi"], tmp_path / "run")
    assert order == ran
    assert set(outcome["arms"]) == {"semi", "oracle"} and outcome["comparison"] is None


def test_paths_of_this_machine_stay_out_of_the_results():
    from wsseg.pipeline.study import shareable

    assert shareable("data.root=/home/me/data/stanford") == "data.root=<path>"
    assert shareable("train.epochs=4") == "train.epochs=4"
    assert shareable("model.init_from=release-name") == "model.init_from=release-name"
