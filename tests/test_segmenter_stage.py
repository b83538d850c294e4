"""The segmenter stage's choices that a config makes: measured class weights and their cap."""

import numpy as np
import pytest
from PIL import Image

from wsseg.core.config import config_from_dict
from wsseg.datasets.colour import save_index_png
from wsseg.datasets.folder import folder_source
from wsseg.pipeline.segmenter import segmenter_class_weights

NAMES = ("common", "rare")
PALETTE = ((0, 0, 0), (255, 255, 255))


@pytest.fixture
def source(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    label = np.zeros((40, 50), np.uint8)
    label[0, :20] = 1  # 20 of 2000 pixels: median weighting gives the rare class 50×
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "img" / "t.png")
    save_index_png(tmp_path / "gt" / "t.png", label, PALETTE)
    return folder_source(tmp_path, "img", "gt", NAMES, PALETTE)


def test_measured_class_weights_are_capped(source):
    uncapped = segmenter_class_weights(config_from_dict({"train": {"class_weights": "median"}}), source, ["t"])
    assert uncapped[1] / uncapped[0] == pytest.approx(1980 / 20)
    capped = segmenter_class_weights(config_from_dict({"train": {"class_weights": "median", "class_weight_cap": 5}}),
                                     source, ["t"])
    assert capped.tolist() == pytest.approx([uncapped[0].item(), 5.0])
    assert segmenter_class_weights(config_from_dict({"train": {"class_weights": "none"}}), source, ["t"]) is None


def test_extra_pseudo_mode_keeps_every_n1_crop(source):
    from wsseg.pipeline.data import Run
    from wsseg.datasets.splits import Split
    from wsseg.pipeline.segmenter import n2_per_batch, training_crops

    split = Split(labelled=["t"], tagged=["t"], val=[], test=[], seed=0)
    base = {"train": {"iters_per_epoch": 5, "batch_size": 6}, "weak": {"pseudo_ratio": 0.25}}
    share = config_from_dict(base)
    run = Run(share, source, split, source.tiles[0].image_path.parent)
    n1, n2 = (len(part) for part in training_crops(share, run, None, oracle=True).datasets)
    assert (n1, n2) == (30 - 8, 8) and n2_per_batch(share) == 2
    extra = config_from_dict({**base, "weak": {"pseudo_ratio": 0.25, "pseudo_mode": "extra"}})
    n1, n2 = (len(part) for part in training_crops(extra, run, None, oracle=True).datasets)
    assert (n1, n2) == (30, 5 * 2) and n2_per_batch(extra) == 2
    assert len(training_crops(extra, run, None).datasets) == 1  # task i: N1 alone
    from wsseg.pipeline.data import check_config

    with pytest.raises(ValueError, match="pseudo_ratio"):
        check_config(config_from_dict({"weak": {"pseudo_ratio": 1.0}}))
