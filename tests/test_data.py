"""`prepare_run`'s data check: broken tiles refuse the run, all listed at once, or with
`data.skip_bad_files` leave the split, logged and listed in skipped_files.json."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsseg.datasets.base import DataOptionError, DataProblemsError
from wsseg.datasets.colour import save_index_png
from wsseg.datasets.splits import Split, save_split
from wsseg.pipeline.config_files import config_from_dict
from wsseg.pipeline.data import SKIPPED_FILES, prepare_run
from wsseg.pipeline.data_check import check_data

PALETTE = ((0, 0, 0), (200, 0, 0), (0, 200, 0))
TILES = [f"t{i}" for i in range(10)]


@pytest.fixture
def root(tmp_path) -> Path:
    """Ten valid tiles, then three broken ways: a truncated image, an unknown index, no mask."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for tile_id in TILES:
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{tile_id}.png")
        save_index_png(tmp_path / "masks" / f"{tile_id}.png", rng.integers(0, 3, (20, 24), dtype=np.uint8), PALETTE)
    truncated = tmp_path / "images" / "t2.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    save_index_png(tmp_path / "masks" / "t5.png", np.full((20, 24), 7, np.uint8), PALETTE)
    (tmp_path / "masks" / "t7.png").unlink()
    return tmp_path


def cfg_for(root: Path, **data):
    return config_from_dict({
        "data": {"kind": "folder", "root": str(root), **data,
                 "options": {"image_dir": "images", "mask_dir": "masks", "class_names": ["a", "b", "c"]}},
        "split": {"n_labelled": 2, "n_tagged": 3, "n_val": 1},
        "model": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        "train": {"crop_px": 16}, "eval": {"window_px": 16, "stride_px": 16}})


def test_broken_tiles_refuse_the_run_all_listed_and_nothing_written(root, tmp_path):
    with pytest.raises(DataProblemsError) as caught:
        prepare_run(cfg_for(root), tmp_path / "run", weak=False)
    assert sorted(p.tile_id for p in caught.value.problems) == ["t2", "t5", "t7"]
    assert "data.skip_bad_files: true" in caught.value.hint
    assert not (tmp_path / "run").exists()


def test_skip_bad_files_trains_without_them_and_lists_them_in_the_run_folder(root, tmp_path, caplog):
    run = prepare_run(cfg_for(root, skip_bad_files=True), tmp_path / "run", weak=False)
    assert run.skipped_tiles == ("t2", "t5", "t7")
    assert not set(run.split.all_tiles()) & {"t2", "t5", "t7"}
    assert {t.tile_id for t in run.source.tiles} == set(TILES) - {"t2", "t5", "t7"}
    skipped = json.loads((tmp_path / "run" / SKIPPED_FILES).read_text())
    assert skipped["skipped_tiles"] == ["t2", "t5", "t7"]
    assert {Path(p["where"]).name for p in skipped["problems"]} == {"t2.png", "t5.png", "t7.png"}
    assert "3 tile(s) left out" in caplog.text and "class index 7" in caplog.text
    # The split it saved is the one it trains on: a resumed run finds nothing more to skip.
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert saved["labelled"] + saved["tagged"] + saved["val"] + saved["test"] == run.split.all_tiles()
    again = prepare_run(cfg_for(root, skip_bad_files=True), tmp_path / "run", resume=True, weak=False)
    assert again.split == run.split


def test_a_resumed_split_naming_a_tile_that_is_gone_is_a_problem_of_that_tile(root, tmp_path):
    for tile_id in ("t2", "t5", "t7"):  # repaired: only the vanished tile is left to report
        (root / "images" / f"{tile_id}.png").unlink()
        (root / "masks" / f"{tile_id}.png").unlink(missing_ok=True)
    save_split(tmp_path / "run" / "split.json", Split(["t0"], ["t1", "t2"], ["t3"], ["t4"], seed=0))
    with pytest.raises(DataProblemsError, match=r"split.json: tagged tile 't2' is not in the dataset"):
        prepare_run(cfg_for(root), tmp_path / "run", resume=True, weak=False)


def test_check_data_finds_what_training_refuses_and_counts_the_tiles(root):
    result = check_data(cfg_for(root), progress=False)
    assert sorted(p.tile_id for p in result.blocking) == ["t2", "t5", "t7"] and not result.warnings
    assert result.summary() == "checked 10 tiles of 'folder': 3 problem(s) in 3 tile(s)"


def test_encoder_weights_are_looked_up_in_the_caches_never_downloaded(tmp_path, monkeypatch):
    from wsseg.core.typed import ConfigError
    from wsseg.pipeline.config_checks import check_weight_files, encoder_weights_file

    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "wsseg_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.chdir(tmp_path)
    given = "resnet_weights/vgg16-397923af.pth"
    with pytest.raises(ConfigError, match=r"model.encoder_weights 'resnet_weights/vgg16-397923af.pth': no such file, "
                                          r"nor vgg16-397923af.pth in .*wsseg_cache or .*torch_home/hub/checkpoints"):
        encoder_weights_file(given)
    # torchvision's own download of the weights, where `VGG16_Weights.IMAGENET1K_V1` puts it.
    in_torch = tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    in_torch.parent.mkdir(parents=True)
    in_torch.write_bytes(b"weights")
    assert encoder_weights_file(given) == in_torch
    in_wsseg = tmp_path / "wsseg_cache" / "vgg16-397923af.pth"
    in_wsseg.parent.mkdir(parents=True)
    in_wsseg.write_bytes(b"weights")
    assert encoder_weights_file(given) == in_wsseg
    (tmp_path / "resnet_weights").mkdir()
    (tmp_path / given).write_bytes(b"weights")
    assert encoder_weights_file(given) == Path(given)
    with pytest.raises(ConfigError, match="segmenter 'unet' has no VGG encoder"):
        check_weight_files(config_from_dict({"model": {"name": "unet", "encoder_weights": given}}))
    check_weight_files(config_from_dict({"model": {"name": "fcn8s", "encoder_weights": given}}))


def test_missing_encoder_weights_stop_the_run_before_it_writes_anything(root, tmp_path, monkeypatch):
    from wsseg.core.typed import ConfigError

    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch"))
    cfg = cfg_for(root, skip_bad_files=True)
    cfg.model.name, cfg.model.options, cfg.model.encoder_weights = "fcn8s", {"width": 0.125}, "nowhere/vgg16.pth"
    with pytest.raises(ConfigError, match="model.encoder_weights 'nowhere/vgg16.pth': no such file"):
        prepare_run(cfg, tmp_path / "run", weak=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_run_names_its_tags_for_report_titles(root, tmp_path):
    cfg = cfg_for(root, skip_bad_files=True)
    assert prepare_run(cfg, tmp_path / "grid", weak=False).tags_title == "crop tags"
    cfg.weak.tags = "image"
    assert prepare_run(cfg, tmp_path / "image", weak=False).tags_title == "image tags"


def test_a_bad_split_setting_is_refused_as_such_beside_broken_tiles(root, tmp_path):
    """Not "fix the tiles above": no tile makes split.n_test 0 work."""
    cfg = cfg_for(root)
    cfg.split.n_test = 0
    with pytest.raises(DataOptionError, match="split.n_test is 0"):
        prepare_run(cfg, tmp_path / "run", weak=False)
    assert not (tmp_path / "run").exists()
