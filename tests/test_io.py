"""Atomic writes: the file a reader finds is whole, and has the mode a plain `open()` gives."""

import os
import stat
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from wsseg.core.checkpoint import save_checkpoint
from wsseg.core.io import atomic_write, atomic_write_json
from wsseg.datasets.colour import save_index_png


@contextmanager
def umask(value: int):
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# 0o022: the usual default (group and others read); 0o002: a shared group's (group writes too);
# 0o077: a private one. Each gives the files another mode, none of them mkstemp's 0o600.
@pytest.mark.parametrize("mask_bits, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
                         ids=["umask 022", "umask 002", "umask 077"])
def test_json_checkpoint_and_mask_get_the_mode_of_the_umask(tmp_path, mask_bits, expected):
    with umask(mask_bits):
        atomic_write_json(tmp_path / "metrics.json", {"miou": 0.5})
        save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(2)}, "epoch": 1})
        # How `wsseg predict` and the pseudo masks write a mask.
        atomic_write(tmp_path / "mask.png",
                     lambda tmp: save_index_png(tmp, np.zeros((4, 5), np.uint8), [(0, 0, 0), (255, 0, 0)]))
        plain = tmp_path / "plain.txt"
        plain.write_text("what open() gives")
    assert mode(plain) == expected
    for name in ("metrics.json", "last.pt", "mask.png"):
        assert mode(tmp_path / name) == expected, name
    assert Image.open(tmp_path / "mask.png").mode == "P"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"v": 1})

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a.json", fail)
    assert (tmp_path / "a.json").read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
