"""`wsseg sweep`: a grid of config values, one run each, resumable, one table; bad grids fail first."""

import json

import pytest
from test_run_training import tiny_config

from wsseg.cli import main
from wsseg.core.typed import ConfigError
from wsseg.pipeline.sweep_plan import combination_name, parse_grid, split_values

# Two epochs of two steps: enough for a validation curve, seconds per combination.
SHORT = {"epochs": 2, "iters_per_epoch": 2, "batch_size": 4, "crop_px": 64}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    config = tiny_config(tmp, tmp / "data", train=SHORT, split={"n_labelled": 3, "n_tagged": 6, "n_val": 1})
    out = tmp / "sweep"
    argv = ["sweep", "--config", str(config), "--grid", "train.optimizer=adam,rmsprop", "--out", str(out),
            "--set", "train.lr=1e-3"]
    assert main(argv) == 0
    return config, out, argv


def _metrics(run_dir):
    return json.loads((run_dir / "task_i" / "metrics.json").read_text())


def test_every_combination_runs_in_its_own_folder_and_is_tabulated(sweep):
    _, out, _ = sweep
    summary = json.loads((out / "sweep.json").read_text())
    assert [r["combination"] for r in summary["runs"]] == ["train.optimizer=adam", "train.optimizer=rmsprop"]
    assert summary["grid"] == {"train.optimizer": ["adam", "rmsprop"]} and summary["overrides"] == ["train.lr=1e-3"]
    table = (out / "sweep.md").read_text()
    for run in summary["runs"]:
        run_dir = out / run["folder"]
        metrics = _metrics(run_dir)
        assert (run_dir / "task_i" / "report.md").is_file() and (run_dir / "log.txt").is_file()
        # Each folder is an ordinary run of its combination, with every other key as configured.
        saved = (run_dir / "config.yaml").read_text()
        assert f"optimizer: {run['overrides']['train.optimizer']}" in saved and "lr: 0.001" in saved
        stage = run["stages"]["task i"]
        assert stage["miou"] == metrics["miou"] and stage["mean_f1"] == metrics["mean_f1"]
        assert [row["epoch"] for row in stage["history"]] == [1, 2]
        best = max(stage["history"], key=lambda row: row["val_miou"])
        assert (stage["best_val_miou"], stage["best_val_epoch"]) == (best["val_miou"], best["epoch"])
        # The checkpoint evaluated on test is the one of the best validation epoch.
        assert metrics["checkpoint"]["epoch"] == best["epoch"]
        assert run["wall_s"] > 0 and run["attempts"] == 1
        row = next(line for line in table.splitlines() if f"`{run['combination']}`" in line)
        assert f"| {metrics['miou']:.3f} | {metrics['mean_f1']:.3f} |" in row
        assert f"{best['val_miou']:.3f}" in row and f"| {best['epoch']} |" in row
    assert (out / "sweep.png").stat().st_size > 0


def test_a_rerun_skips_finished_combinations_and_resumes_the_others(sweep, capsys):
    _, out, argv = sweep
    adam, rmsprop = out / "train.optimizer=adam", out / "train.optimizer=rmsprop"
    kept = (adam / "task_i" / "metrics.json").stat().st_mtime_ns
    # rmsprop as if stopped after training, before its evaluation finished.
    (rmsprop / "task_i" / "done.json").unlink()
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "train.optimizer=adam already finished, skipped" in said
    assert (adam / "task_i" / "metrics.json").stat().st_mtime_ns == kept
    assert (rmsprop / "task_i" / "done.json").is_file()
    runs = {r["combination"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert runs["train.optimizer=rmsprop"]["attempts"] == 2 and runs["train.optimizer=adam"]["attempts"] == 1
    assert runs["train.optimizer=rmsprop"]["stages"]["task i"]["miou"] == _metrics(rmsprop)["miou"]


def test_a_bad_key_or_value_fails_before_anything_trains(sweep, tmp_path, capsys):
    config, _, _ = sweep
    out = tmp_path / "bad"
    assert main(["sweep", "--config", str(config), "--grid", "train.optimiser=adam,sgd", "--out", str(out)]) == 2
    assert "unknown config key train.optimiser" in capsys.readouterr().err
    # The adam combination is fine, but nothing runs while another combination is broken.
    assert main(["sweep", "--config", str(config), "--grid", "train.optimizer=adam,adagrad", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sweep combination train.optimizer=adagrad" in err and "'adagrad' is not one of" in err
    assert main(["sweep", "--config", str(config), "--grid", "train.crop_px=64,0", "--out", str(out)]) == 2
    assert "train.crop_px must be at least 1" in capsys.readouterr().err
    assert main(["sweep", "--config", str(config), "--grid", "split.n_labelled=3,500", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "split.n_labelled=500" in err and "; fix: ask for fewer tiles (split.n_labelled" in err
    assert not out.exists()


def test_a_folder_of_another_config_is_refused(sweep, capsys):
    config, out, _ = sweep
    assert main(["sweep", "--config", str(config), "--grid", "train.optimizer=adam,rmsprop", "--out", str(out),
                 "--set", "train.lr=1e-2"]) == 2
    assert "holds a run of another config (train.lr: 0.001 there, 0.01 now)" in capsys.readouterr().err


def test_grid_values_split_like_set_values():
    assert split_values("adam, adamw,rmsprop") == ["adam", "adamw", "rmsprop"]
    assert split_values("[1, 2],[3],{adamw: 0.004, adam: 0}") == ["[1, 2]", "[3]", "{adamw: 0.004, adam: 0}"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert parse_grid(["train.lr=1e-3,1e-4", "model.name=unet"]) == [("train.lr", ["1e-3", "1e-4"]),
                                                                      ("model.name", ["unet"])]
    assert combination_name([("train.lr", "1e-3"), ("data.root", "/data/x y")]) == "train.lr=1e-3,data.root=_data_x_y"
    for bad, message in ((["train.lr"], "not of the form"), (["train.lr=1,"], "none empty"),
                         (["train.lr=1,1"], "given twice"), (["a=1", "a=2"], "given twice"), ([], "at least one")):
        with pytest.raises(ConfigError, match=message):
            parse_grid(bad)
