"""Config files to `pipeline.config.Config` and back: YAML, `--set a.b=value` overrides, and keys
retired since a config (or a checkpoint's saved config) was written.

Every key must be known and of the declared type: a typo in a config is an error naming the key,
not a silently ignored setting. The merged configuration is written into each run folder, so a
run can always be reproduced from its own folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from wsseg.core.typed import ConfigError, from_dict
from wsseg.pipeline.config import Config, config_to_dict


def config_from_dict(values: dict) -> Config:
    _refuse_crf_section(values or {})
    _refuse_retired(values or {})
    return from_dict(Config, values or {})


# Keys that configs, checkpoints and run folders written before 2026-12-07 may hold, and what the
# code does now in their place: a user's config naming one is told so, and a saved config (a
# checkpoint's, a published model's) still loads, since none of them changes how a model predicts.
RETIRED_KEYS = {
    "train.momentum": "SGD's momentum is 0.9",
    "train.rmsprop_alpha": "RMSprop's alpha is 0.9 (Keras' rho)",
    "train.poly_power": "the poly schedule's power is 0.9",
    "train.step_epochs": "the step schedule is gone (constant or poly)",
    "train.step_gamma": "the step schedule is gone (constant or poly)",
    "train.class_weight_floor": "measured class weights have a floor of 0.1",
    "weak.single_stage.momentum": "the published 0.9",
    "weak.single_stage.weight_decay": "the published 5e-4",
    "weak.single_stage.self_supervised_weight": "the published 1.0",
    "weak.single_stage.pamr_dilations": "the published [1, 2, 4, 8, 12, 24]",
    "weak.single_stage.pamr_iter": "the published 10",
    "weak.single_stage.reject_background_below_recall": "fixed at 0.05",
    "weak.pseudo.bg_pow": "the published 3",
    "weak.pseudo.confidence_threshold": "fixed at 0.5",
    "weak.pseudo.min_class_precision": "no class is dropped from the pseudo masks",
    "weak.pseudo.abstain_below_recall": "fixed at 0.05",
    "weak.pseudo_weight": "pseudo-labelled pixels weigh 1.0",
    "weak.finetune_epochs": "no fine-tuning on N1 after the mixed training",
    "weak.init_from_task_i": "task ii starts from ImageNet weights, as task i",
    "semi.teacher": "the mean (EMA) teacher is the only one",
    "semi.ema_decay": "the teacher's decay is 0.99",
    "semi.rampup": "the ramp-up is 0.2 of the steps",
    "semi.cutmix_p": "CutMix on half the N2 crops (UniMatch's 0.5)",
    "zoomout.weight_decay": "the classifier has no weight decay",
    "zoomout.fold_normalisation": "the feature normalisation stays as buffers",
    # 2026-12-08
    "eval.every_epochs": "validation runs after every epoch",
    "eval.max_f_class": "KITTI Road's MaxF of road is scored for data.kind kitti_road",
    "eval.xview2_score": "the xView2 score is reported wherever the classes are xView2's damage grades",
    "weak.single_stage.lr": "the published 1e-3",
    "weak.single_stage.precision": "the single-stage model trains at train.precision",
    "weak.single_stage.channels_last": "the single-stage model keeps the default memory format",
    "weak.single_stage.background": "write constant_background: <class>, or null for every class learned",
    "weak.single_stage.background_class": "write constant_background: <class>, or null for every class learned",
    "weak.pseudo.flip": "every scale is also predicted flipped, as published",
    "weak.pseudo.workers": "the pseudo masks are written with train.workers",
    "weak.tag_min_fraction": "every class with a labelled pixel in the crop is in its tags",
    "weak.pseudo_ratio": "N2 crops are half of a shared batch, or as many as N1's on top (pseudo_mode: extra)",
    "semi.weight": "UniMatch's 0.5",
    "zoomout.pixels_per_class": "the seed's 3",
    "zoomout.batch_size": "the seed's 128",
    "zoomout.lr": "the seed's 1e-3",
    "out_root": "--out names the run folder; without it, runs/<config>-<time>",
}


def _retired_in(values: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in RETIRED_KEYS:
            found.append(path)
        elif isinstance(value, dict):
            found += _retired_in(value, path + ".")
    return found


def _refuse_retired(values: dict) -> None:
    found = _retired_in(values)
    if found:
        raise ConfigError(f"config key {found[0]} was retired: {RETIRED_KEYS[found[0]]}; remove it from the config"
                          + (f" (also retired here: {', '.join(found[1:])})" if found[1:] else ""))


def saved_config_from_dict(values: dict) -> Config:
    """The config saved in a checkpoint or a published model: keys retired since it was written are
    dropped (an old `crf: {enabled: ...}` section read as its `enabled`, an old `background` and
    `background_class` as their `constant_background`), so that a model
    trained by an earlier wsseg still evaluates, predicts and publishes."""
    values = copy.deepcopy(values or {})
    _background_as_one_key(values)
    for path in _retired_in(values):
        *sections, key = path.split(".")
        node = values
        for section in sections:
            node = node[section]
        del node[key]
    pseudo = values.get("weak", {}).get("pseudo", {}) if isinstance(values.get("weak"), dict) else {}
    if isinstance(pseudo, dict) and isinstance(pseudo.get("crf"), dict):
        pseudo["crf"] = pseudo["crf"].get("enabled", True)
    return from_dict(Config, values)


def _background_as_one_key(values: dict) -> None:
    """A saved `background: constant | learned` with its `background_class`, read as the
    `constant_background` they meant (null where every class was learned)."""
    weak = values.get("weak")
    ss = weak.get("single_stage") if isinstance(weak, dict) else None
    if isinstance(ss, dict) and ("background" in ss or "background_class" in ss):
        kind, name = ss.pop("background", "constant"), ss.pop("background_class", "clutter")
        ss.setdefault("constant_background", name if kind == "constant" else None)


# `weak.pseudo.crf` was a section ({enabled, n_iter, ...}) until its parameters became the published
# ones: an old config would otherwise meet a type error that does not say what to write instead.
CRF_IS_ONE_KEY = ("weak.pseudo.crf is a single key now (its parameters are the published ones): write "
                  "`crf: auto`, `crf: true` or `crf: false`")


def _refuse_crf_section(values: dict) -> None:
    weak = values.get("weak")
    pseudo = weak.get("pseudo") if isinstance(weak, dict) else None
    if isinstance(pseudo, dict) and isinstance(pseudo.get("crf"), dict):
        raise ConfigError(f"{CRF_IS_ONE_KEY}, not {pseudo['crf']!r}")



def override_value(raw: str) -> Any:
    """A `--set` value: YAML (1e-3, true, [1, 2], {adamw: 0.004}), or the text as it is where it
    is no YAML. A folder name such as `{part}/images` opens a YAML flow mapping and fails to parse;
    nobody means a parser error by it, and a typed key still refuses a string it cannot take."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a nested dict; values as `override_value` reads them."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        if key.strip().startswith("weak.pseudo.crf."):
            raise ConfigError(f"override {key.strip()}: {CRF_IS_ONE_KEY}")
        path = key.strip().split(".")
        node = values
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = child
        node[path[-1]] = override_value(raw)
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    values = apply_overrides(values, list(overrides))
    try:
        return config_from_dict(values)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    from wsseg.core.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
