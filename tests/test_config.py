from pathlib import Path

import pytest
import yaml

from wsseg.core.typed import ConfigError
from wsseg.pipeline.config import Config
from wsseg.pipeline.config_files import load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(CONFIGS / "vaihingen_task1.yaml",
                      ["train.epochs=3", "train.lr=5e-4", "model.options.width=0.5", "train.class_weights=median",
                       "weak.pseudo.scales=[1, 2]"])
    assert cfg.train.epochs == 3
    assert cfg.train.lr == pytest.approx(5e-4)
    assert cfg.model.options["width"] == 0.5
    assert cfg.train.class_weights == "median"
    assert cfg.weak.pseudo.scales == [1.0, 2.0]


def test_an_override_that_is_no_yaml_is_the_text_itself():
    """`{part}/images` opens a YAML flow mapping and does not parse: the folder name is meant."""
    cfg = load_config(None, ["data.kind=folder", "data.options.image_dir={part}/images",
                             "data.options.mask_dir=ann_dir/{part}", "data.options.class_names=[a, b]"])
    assert cfg.data.options == {"image_dir": "{part}/images", "mask_dir": "ann_dir/{part}", "class_names": ["a", "b"]}
    # Valid YAML keeps its meaning, quoted text included.
    assert load_config(None, ["data.options={image_dir: '{part}'}"]).data.options == {"image_dir": "{part}"}
    # A typed key still refuses the text it cannot take, naming the key.
    with pytest.raises(ConfigError, match=r"weak.pseudo.scales: expected a list, got '\[1, 2'"):
        load_config(None, ["weak.pseudo.scales=[1, 2"])


def test_integers_widen_to_float_but_not_the_reverse():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got 2.5"):
        load_config(None, ["train.epochs=2.5"])


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 2, "learning_rate": 0.1}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key train.learning_rate"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown config key weak.single_stage.sxy"):
        load_config(None, ["weak.single_stage.sxy=3"])


def test_the_crf_section_of_old_configs_says_what_to_write(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"weak": {"pseudo": {"crf": {"enabled": "auto", "n_iter": 10}}}}))
    with pytest.raises(ConfigError, match=r"old.yaml: weak.pseudo.crf is a single key now .*write `crf: auto`, "
                                          r"`crf: true` or `crf: false`, not \{'enabled': 'auto', 'n_iter': 10\}"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override weak.pseudo.crf.enabled: weak.pseudo.crf is a single key"):
        load_config(CONFIGS / "dubai.yaml", ["weak.pseudo.crf.enabled=false"])
    assert load_config(CONFIGS / "dubai.yaml").weak.pseudo.crf == "auto"
    assert load_config(None, ["weak.pseudo.crf=false"]).weak.pseudo.crf is False


def test_wrong_type_and_choice_are_errors():
    with pytest.raises(ConfigError, match="train.optimizer: 'adagrad' is not one of"):
        load_config(None, ["train.optimizer=adagrad"])
    with pytest.raises(ConfigError, match="train.augment: expected true or false"):
        load_config(None, ["train.augment=yes please"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["train.epochs"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(CONFIGS / "vaihingen_task1.yaml", ["train.epochs=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_weight_decay_per_optimizer():
    from wsseg.pipeline.config import optimizer_names, weight_decay_of
    from wsseg.pipeline.config_checks import check_config

    assert optimizer_names() == ("adam", "adamw", "sgd", "rmsprop")
    assert weight_decay_of(load_config(None, ["train.optimizer=adamw", "train.weight_decay=1e-4"]).train) == 1e-4
    # A mapping gives each optimizer its own decay (ints widen), the ones it leaves out none.
    per = ["train.weight_decay={adamw: 0.004, sgd: 1}"]
    assert weight_decay_of(load_config(None, per + ["train.optimizer=adamw"]).train) == 0.004
    assert weight_decay_of(load_config(None, per + ["train.optimizer=sgd"]).train) == 1.0
    assert weight_decay_of(load_config(None, per + ["train.optimizer=rmsprop"]).train) == 0.0
    with pytest.raises(ConfigError, match=r"train.weight_decay.adamw: expected a number, got 'lots'"):
        load_config(None, ["train.weight_decay={adamw: lots}"])
    with pytest.raises(ConfigError, match="train.weight_decay names no optimizer 'adamax'"):
        check_config(load_config(None, ["train.weight_decay={adamax: 0.1}"]))
    with pytest.raises(ConfigError, match="train.weight_decay.adam must be at least 0"):
        check_config(load_config(None, ["train.weight_decay={adam: -0.1}"]))


def test_a_retired_key_is_named_with_what_replaced_it(tmp_path):
    from wsseg.pipeline.config import config_to_dict, Config
    from wsseg.pipeline.config_files import RETIRED_KEYS, load_config

    path = tmp_path / "old.yaml"
    path.write_text("train:\n  momentum: 0.5\n  poly_power: 1.0\nweak:\n  pseudo_weight: 0.5\n")
    with pytest.raises(ConfigError, match=r"train\.momentum was retired: SGD's momentum is 0\.9.*weak\.pseudo_weight"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"semi\.cutmix_p was retired"):
        load_config(None, ["semi.cutmix_p=0.3"])
    # None of them is a key of today's schema (a retired key that came back would be shadowed).
    flat = set()

    def walk(node, prefix=""):
        for key, value in node.items():
            flat.add(prefix + key)
            if isinstance(value, dict):
                walk(value, prefix + key + ".")

    walk(config_to_dict(Config()))
    assert not set(RETIRED_KEYS) & flat


def test_a_config_saved_before_the_retirement_still_loads():
    """A checkpoint or published model of an earlier wsseg holds the retired keys and the old CRF section."""
    from wsseg.pipeline.config import config_to_dict, Config
    from wsseg.pipeline.config_files import saved_config_from_dict

    old = config_to_dict(Config())
    old["train"].update(momentum=0.9, rmsprop_alpha=0.99, poly_power=0.9, step_epochs=10, step_gamma=0.1,
                        class_weight_floor=0.1)
    old["weak"].update(pseudo_weight=1.0, finetune_epochs=0, init_from_task_i=False)
    old["weak"]["pseudo"].update(min_class_precision=0.5, bg_pow=3.0,
                                 crf={"enabled": "auto", "n_iter": 10, "gauss_sxy": 3.0})
    old["semi"].update(teacher="ema", ema_decay=0.99, rampup=0.2, cutmix_p=0.5)
    old["model"]["options"] = {"momentum": 1}  # a model option of that name is not a retired key
    cfg = saved_config_from_dict(old)
    assert cfg.weak.pseudo.crf == "auto"
    assert cfg.model.options == {"momentum": 1}
    assert config_to_dict(cfg)["train"] == config_to_dict(Config())["train"]


@pytest.mark.parametrize("saved, constant", [
    ({"background": "constant", "background_class": "land"}, "land"),
    ({"background": "learned", "background_class": "clutter"}, None),
    ({"background": "constant"}, "clutter"),  # the default class of that time
])
def test_a_saved_background_and_its_class_read_as_the_constant_background(saved, constant):
    """Configs saved before 2026-12-08 said `background: constant | learned` and
    `background_class`; a model trained then still loads with the layout it was trained with."""
    from wsseg.pipeline.config import config_to_dict, Config
    from wsseg.pipeline.config_files import saved_config_from_dict

    old = config_to_dict(Config())
    del old["weak"]["single_stage"]["constant_background"]
    old["weak"]["single_stage"].update(saved, precision="fp32", lr=1e-3, channels_last=False)
    old["eval"].update(every_epochs=5, max_f_class="road", xview2_score=False)
    old.update(out_root="runs")
    assert saved_config_from_dict(old).weak.single_stage.constant_background == constant


def test_a_user_config_with_the_old_background_keys_is_told_the_new_one():
    from wsseg.pipeline.config_files import load_config

    with pytest.raises(ConfigError, match="weak.single_stage.background was retired: write constant_background"):
        load_config(None, ["weak.single_stage.background=learned"])
