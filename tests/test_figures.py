"""The report's figures: what their legends say each colour is."""

import numpy as np
from matplotlib.colors import to_rgba

from wsseg.core.figures import class_bars_figure, plot_class_bars

NAMES = ["background", "road", "roof"]
PALETTE = [(0, 0, 0), (128, 128, 128), (200, 0, 0)]  # class 0 black, as the default palette draws it
ARMS = [("task i", [0.5, 0.4, 0.3]), ("semi", [0.5, 0.45, 0.35]), ("task ii", [0.6, 0.5, 0.4])]


def rgba(colour) -> tuple:
    return tuple(np.round(to_rgba(colour), 4))


def test_the_arms_of_a_comparison_have_colours_of_their_own_in_bars_and_legend():
    fig = class_bars_figure(ARMS, NAMES, PALETTE, "IoU", "per-class IoU", [("mIoU task i", 0.4)])
    ax = fig.axes[0]
    texts, handles = ax.get_legend().get_texts(), ax.get_legend().legend_handles
    legend = {text.get_text(): handle for text, handle in zip(texts, handles)}
    arm_colours = [rgba(legend[name].get_facecolor()) for name, _ in ARMS]
    assert len(set(arm_colours)) == len(ARMS)
    class_colours = {rgba(np.array(c) / 255) for c in PALETTE}
    assert not set(arm_colours) & class_colours
    # Every bar of an arm is in the colour its legend entry shows.
    for (name, _), container, colour in zip(ARMS, ax.containers, arm_colours):
        assert container.get_label() == name
        assert {rgba(bar.get_facecolor()) for bar in container} == {colour}
    assert "mIoU task i 0.400" in legend


def test_a_single_series_keeps_the_class_colours(tmp_path):
    fig = class_bars_figure([("full GT", [0.5, 0.4, 0.3])], NAMES, PALETTE, "IoU", "per-class IoU")
    (bars,) = fig.axes[0].containers
    assert [rgba(bar.get_facecolor()) for bar in bars] == [rgba(np.array(c) / 255) for c in PALETTE]
    path = plot_class_bars(tmp_path / "iou_bars.png", [("full GT", [0.5, 0.4, 0.3])], NAMES, PALETTE, "IoU", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
