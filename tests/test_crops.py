import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from wsseg.datasets.base import DatasetError, TileSource
from wsseg.datasets.colour import save_index_png
from wsseg.datasets.crops import RandomCropDataset, TileDataset
from wsseg.datasets.folder import folder_source
from wsseg.datasets.tagged_crops import TaggedCropDataset
from wsseg.datasets.tags import CropTag, TagGrid, compute_crop_tags
from wsseg.datasets.tile_cache import TileCache
from wsseg.datasets.unlabelled import UnlabelledViews

NAMES = ("a", "b", "c", "d")
PALETTE = ((0, 0, 0), (80, 80, 80), (160, 160, 160), (240, 240, 240))


def _tiles(root, sizes={"t1": (40, 50), "t2": (64, 64), "small": (12, 20)}):
    """Tiles whose image encodes the label (R = 60·class + 10, G = 255 − row, B = col), so every
    crop's image and mask can be checked against each other after any flip or rotation."""
    (root / "img").mkdir(parents=True)
    (root / "gt").mkdir(parents=True)
    labels = {}
    for k, (name, (h, w)) in enumerate(sizes.items()):
        rng = np.random.default_rng(k)
        label = rng.integers(0, 4, (h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.05] = 255
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = np.where(label == 255, 0, label.astype(np.int32) * 60 + 10)
        image[..., 1] = 255 - np.arange(h)[:, None]
        image[..., 2] = np.arange(w)[None, :]
        Image.fromarray(image).save(root / "img" / f"{name}.png")
        save_index_png(root / "gt" / f"{name}.png", label, PALETTE)
        labels[name] = label
    return folder_source(root, "img", "gt", NAMES, PALETTE), labels


def _no_labels(source):
    def refuse(path):
        raise AssertionError(f"label read: {path}")
    return TileSource(source.name, source.classes, source.tiles, source.read_image, refuse)


def _check_consistent(image, mask):
    labelled = mask != 255
    expected = (mask[labelled].float() * 60 + 10) / 255
    assert torch.allclose(image[0][labelled], expected, atol=1e-6)


def test_random_crops_contract_and_joint_augmentation(tmp_path):
    source, _ = _tiles(tmp_path)
    data = RandomCropDataset(source, ["t1", "t2"], crop_px=32, samples_per_epoch=40, augment=True, seed=0)
    assert len(data) == 40
    orientations = set()
    for i in range(40):
        image, mask = data[i]
        assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
        assert mask.dtype == torch.int64 and mask.shape == (32, 32)
        assert 0 <= image.min() and image.max() <= 1
        _check_consistent(image, mask)
        # Row/column ramps tell which of the 8 flips/rotations was applied.
        g, b = image[1], image[2]
        orientations.add(tuple(int(torch.sign(d).item()) for d in
                               (g[-1, 0] - g[0, 0], g[0, -1] - g[0, 0], b[-1, 0] - b[0, 0], b[0, -1] - b[0, 0])))
    assert len(orientations) >= 6  # of the 8 symmetries


def test_crops_are_deterministic_per_seed_epoch_index(tmp_path):
    source, _ = _tiles(tmp_path)
    a = RandomCropDataset(source, ["t1", "t2"], 24, 10, seed=5)
    b = RandomCropDataset(source, ["t1", "t2"], 24, 10, seed=5)
    for i in (0, 3, 9):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    first = a[3][0].clone()
    a.set_epoch(1)
    assert not torch.equal(a[3][0], first)
    a.set_epoch(0)
    assert torch.equal(a[3][0], first)


def test_same_samples_with_worker_processes(tmp_path):
    source, _ = _tiles(tmp_path)
    data = RandomCropDataset(source, ["t1", "t2"], 16, 8, seed=2)
    serial = torch.cat([m for _, m in DataLoader(data, batch_size=4)])
    parallel = torch.cat([m for _, m in DataLoader(data, batch_size=4, num_workers=2)])
    assert torch.equal(serial, parallel)


def test_unaugmented_crop_is_a_window_of_the_tile(tmp_path):
    source, labels = _tiles(tmp_path)
    data = RandomCropDataset(source, ["t2"], 20, 5, augment=False)
    image, mask = data[0]
    y, x = 255 - int(round(image[1, 0, 0].item() * 255)), int(round(image[2, 0, 0].item() * 255))
    assert torch.equal(mask, torch.from_numpy(labels["t2"][y:y + 20, x:x + 20].astype(np.int64)))


def test_small_tile_is_padded_with_ignore(tmp_path):
    source, labels = _tiles(tmp_path)
    image, mask = RandomCropDataset(source, ["small"], 32, 1, augment=False)[0]
    assert torch.equal(mask[:12, :20], torch.from_numpy(labels["small"].astype(np.int64)))
    assert (mask[12:] == 255).all() and (mask[:, 20:] == 255).all()
    assert (image[:, 12:] == 0).all()


def test_label_override_replaces_ground_truth(tmp_path):
    source, labels = _tiles(tmp_path)
    pseudo = np.full((64, 64), 2, np.uint8)
    pseudo[:, :10] = 255
    save_index_png(tmp_path / "pseudo_t2.png", pseudo, PALETTE)
    data = RandomCropDataset(_no_labels(source), ["t2"], 30, 6, label_override={"t2": tmp_path / "pseudo_t2.png"})
    for i in range(6):
        assert set(torch.unique(data[i][1]).tolist()) <= {2, 255}
    with pytest.raises(DatasetError, match=r"no mask for tiles \['t1'\]"):
        RandomCropDataset(source, ["t1", "t2"], 30, 6, label_override={"t2": tmp_path / "pseudo_t2.png"})
    save_index_png(tmp_path / "wrong.png", pseudo[:50], PALETTE)
    with pytest.raises(DatasetError, match="wrong.png: mask is 50×64"):
        RandomCropDataset(source, ["t2"], 30, 1, label_override={"t2": tmp_path / "wrong.png"})[0]


def test_tile_cache_decodes_once_and_evicts_least_recent():
    cache = TileCache(max_bytes=250)
    calls = []

    def load(key):
        calls.append(key)
        return np.zeros(100, np.uint8)

    for key in ("a", "b", "a", "a"):
        cache.get(key, lambda k=key: load(k))
    assert calls == ["a", "b"]
    cache.get("c", lambda: load("c"))  # 300 bytes > 250: evicts b, the least recently used
    assert "a" in cache and "c" in cache and "b" not in cache


def test_random_crop_dataset_reads_each_tile_once(tmp_path):
    source, _ = _tiles(tmp_path)
    data = RandomCropDataset(source, ["t1", "t2"], 16, 30)
    for i in range(30):
        data[i]
    assert data.cache.loads == 2


def test_tagged_crops_never_read_labels(tmp_path):
    source, _ = _tiles(tmp_path)
    tags = [CropTag("t1", 0, 0, 32, 32, (0, 2)), CropTag("t2", 32, 32, 32, 32, (3,)),
            CropTag("small", 0, 0, 12, 20, (1,))]
    data = TaggedCropDataset(_no_labels(source), tags, num_classes=4, augment=True, crop_px=28)
    for i in range(3):
        image, target, index = data[i]
        assert image.shape == (3, 28, 28) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert index == i and target.dtype == torch.float32
        assert target.tolist() == [float(c in tags[i].classes) for c in range(4)]
    plain = TaggedCropDataset(source, tags[:2], 4, augment=False)
    image, _, _ = plain[1]
    assert image.shape == (3, 32, 32)
    assert round(image[2, 0, 0].item() * 255) == 32 and round(255 - image[1, 0, 0].item() * 255) == 32
    again = TaggedCropDataset(source, tags, 4, crop_px=28)
    assert torch.equal(again[0][0], data[0][0])
    again.set_epoch(1)
    assert not torch.equal(again[0][0], data[0][0])
    with pytest.raises(DatasetError, match="leaves its 40×50 image"):
        TaggedCropDataset(source, [CropTag("t1", 20, 0, 32, 32, (0,))], 4)[0]
    with pytest.raises(DatasetError, match="outside 0..3"):
        TaggedCropDataset(source, [CropTag("t1", 0, 0, 8, 8, (4,))], 4)


def test_tile_dataset_returns_whole_tiles(tmp_path):
    source, labels = _tiles(tmp_path)
    image, mask, tile_id = TileDataset(source, ["t1"])[0]
    assert tile_id == "t1" and image.shape == (3, 40, 50) and mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(labels["t1"].astype(np.int64)))
    _check_consistent(image, mask)
    with pytest.raises(DatasetError, match="no tile 'nope'"):
        TileDataset(source, ["nope"])


def test_augmentation_list_picks_the_symmetries(tmp_path):
    source, _ = _tiles(tmp_path)
    kwargs = dict(crop_px=32, samples_per_epoch=40, seed=0)
    every = RandomCropDataset(source, ["t2"], augment=True, **kwargs)
    listed = RandomCropDataset(source, ["t2"], augment=["hflip", "vflip", "rot90"], **kwargs)
    street = RandomCropDataset(source, ["t2"], augment=["hflip"], **kwargs)
    none = RandomCropDataset(source, ["t2"], augment=False, **kwargs)
    for i in range(40):
        assert torch.equal(every[i][0], listed[i][0]) and torch.equal(every[i][1], listed[i][1])
        image, mask = street[i]
        _check_consistent(image, mask)
        plain = none[i][0]
        # Horizontal flips only: rows keep their order (G = 255 − row falls downwards), and each
        # crop is the unaugmented one or its mirror image; the crop positions are the same.
        assert image[1, 0, 0] > image[1, -1, 0]
        assert torch.equal(image, plain) or torch.equal(image, plain.flip(-1))
    assert any(not torch.equal(street[i][0], none[i][0]) for i in range(40))
    with pytest.raises(ValueError, match="scale"):
        RandomCropDataset(source, ["t2"], augment=["scale"], **kwargs)


def test_tagged_crop_augmentation_list(tmp_path):
    source, _ = _tiles(tmp_path)
    tags = [CropTag("t2", 0, 0, 64, 64, (0, 1))]
    full = TaggedCropDataset(source, tags, 4, augment=True, crop_px=32, seed=1)
    listed = TaggedCropDataset(source, tags, 4, augment=["scale", "hflip", "vflip", "rot90", "colour"], crop_px=32,
                               seed=1)
    for epoch in range(6):
        full.set_epoch(epoch), listed.set_epoch(epoch)
        assert torch.equal(full[0][0], listed[0][0])
    upright = TaggedCropDataset(source, tags, 4, augment=["hflip"], crop_px=32, seed=1)
    for epoch in range(6):
        upright.set_epoch(epoch)
        image = upright[0][0]
        assert image.shape == (3, 32, 32) and image[1, 0, 0] > image[1, -1, 0]


def test_unlabelled_views_carry_what_the_tags_say_of_the_crop_window(tmp_path):
    source, labels = _tiles(tmp_path)
    grid = TagGrid(compute_crop_tags(source, ["t1", "t2"], 16), 4)
    plain = UnlabelledViews(RandomCropDataset(source, ["t1", "t2"], 24, 12, seed=4, images_only=True))
    tagged = UnlabelledViews(RandomCropDataset(source, ["t1", "t2"], 24, 12, seed=4, images_only=True), tag_grid=grid)
    windows = RandomCropDataset(source, ["t1", "t2"], 24, 12, seed=4)
    for i in range(12):
        views, same = tagged[i], plain[i]
        # The tags add a key and change no draw: the views of the tag-free arm.
        assert all(torch.equal(views[k], same[k]) for k in ("weak", "strong", "box")) and "tag_targets" not in same
        tile_id, y, x, h, w = windows.sample(i)[2]
        assert (h, w) == (24, 24)
        assert views["tag_targets"].dtype == torch.int8
        assert torch.equal(views["tag_targets"], torch.from_numpy(grid.window_targets(tile_id, y, x, h, w)))
    # The window is the crop's place in the tile before augmentation.
    unaugmented = RandomCropDataset(source, ["t2"], 20, 3, augment=False)
    _, mask, (tile_id, y, x, h, w), _ = unaugmented.sample(1)
    assert torch.equal(mask, torch.from_numpy(labels[tile_id][y:y + h, x:x + w].astype(np.int64)))
    with pytest.raises(DatasetError, match=r"no crop tags for tiles \['small'\]"):
        UnlabelledViews(RandomCropDataset(source, ["small"], 24, 1, images_only=True), tag_grid=grid)


def _stripes(root):
    """A 32×64 image: R vertical stripes 16 px wide, G horizontal stripes 16 px high, B = column."""
    (root / "img").mkdir(parents=True)
    (root / "gt").mkdir(parents=True)
    image = np.zeros((32, 64, 3), np.uint8)
    image[..., 0] = np.where(np.arange(64) // 16 % 2, 255, 0)[None, :]
    image[..., 1] = np.where(np.arange(32) // 16 % 2, 255, 0)[:, None]
    image[..., 2] = 4 * np.arange(64)[None, :]
    Image.fromarray(image).save(root / "img" / "wide.png")
    save_index_png(root / "gt" / "wide.png", np.zeros((32, 64), np.uint8), PALETTE)
    return folder_source(root, "img", "gt", NAMES, PALETTE)


def _run_lengths(values: torch.Tensor) -> list[int]:
    """Lengths of the runs of equal values in a 1-D bool tensor."""
    change = torch.nonzero(values[1:] != values[:-1]).flatten() + 1
    edges = [0, *change.tolist(), len(values)]
    return [b - a for a, b in zip(edges, edges[1:])]


def test_tagged_crops_keep_the_aspect_ratio_and_mirror_into_the_square(tmp_path):
    source = _stripes(tmp_path)
    tags = [CropTag("wide", 0, 0, 32, 64, (0,))]
    image, _, _ = TaggedCropDataset(source, tags, 4, augment=False, crop_px=32, keep_aspect=True)[0]
    assert image.shape == (3, 32, 32)
    # Halved evenly: 16 px stripes become 8 px ones both ways (squashed, the rows would stay 16 px).
    content = image[:, 8:24]
    assert _run_lengths(content[0, 4] > 0.5) == [8, 8, 8, 8]
    assert _run_lengths(content[1, :, 4] > 0.5) == [8, 8]
    assert torch.allclose(content[0], content[0, :1].expand(16, 32), atol=1e-6)  # vertical stripes stay vertical
    # The 8 rows above and below mirror the image's edge rows (symmetric: the edge row repeated).
    assert torch.equal(image[:, :8], image[:, 8:16].flip(1))
    assert torch.equal(image[:, 24:], image[:, 16:24].flip(1))
    # A tall thin crop mirrors again and again across the square; columns keep their order in the middle.
    thin, _, _ = TaggedCropDataset(source, [CropTag("wide", 0, 0, 32, 4, (0,))], 4, augment=False, crop_px=32,
                                   keep_aspect=True)[0]
    middle = thin[:, :, 14:18]
    assert torch.equal(thin[:, :, 10:14], middle.flip(-1)) and torch.equal(thin[:, :, 18:22], middle.flip(-1))
    assert torch.equal(thin[:, :, 6:10], middle) and torch.equal(thin[:, :, 0:2], middle[..., 2:])
    # Augmented: still the square, and the same crop for the same seed.
    augmented = TaggedCropDataset(source, tags, 4, augment=True, crop_px=32, keep_aspect=True)
    assert augmented[0][0].shape == (3, 32, 32) and torch.equal(augmented[0][0], augmented[0][0])
    with pytest.raises(DatasetError, match="keep_aspect needs crop_px"):
        TaggedCropDataset(source, tags, 4, keep_aspect=True)


def test_grid_crops_are_resized_as_before(tmp_path):
    """Grid mode (keep_aspect off) is the published recipe step by step; a square crop without
    the random resized box comes out the same with keep_aspect on."""
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    from wsseg.datasets.augment import random_colour_jitter, random_dihedral, random_resized_box
    from wsseg.datasets.tensors import to_image_tensor

    source, _ = _tiles(tmp_path)
    tags = [CropTag("t2", 0, 0, 48, 48, (0, 1)), CropTag("t2", 16, 16, 48, 48, (2,))]
    data = TaggedCropDataset(source, tags, 4, augment=True, crop_px=40, seed=3)
    for epoch in range(3):
        data.set_epoch(epoch)
        for index, tag in enumerate(tags):
            rng = np.random.default_rng((3, epoch, index))
            image = to_image_tensor(source.image("t2")[tag.y:tag.y + tag.h, tag.x:tag.x + tag.w])
            image = F.resized_crop(image, *random_resized_box(48, 48, rng, (0.9, 1.0)), [40, 40],
                                   interpolation=InterpolationMode.BICUBIC, antialias=True)
            image, _ = random_dihedral(image, None, rng)
            image = random_colour_jitter(image.as_subclass(torch.Tensor).clamp(0, 1), rng)
            assert torch.equal(data[index][0], image.clamp(0, 1))
    fixed = ["hflip", "vflip", "rot90", "colour"]
    squashed = TaggedCropDataset(source, tags, 4, augment=fixed, crop_px=40, seed=3)
    kept = TaggedCropDataset(source, tags, 4, augment=fixed, crop_px=40, seed=3, keep_aspect=True)
    for index in range(2):
        assert torch.equal(squashed[index][0], kept[index][0])
