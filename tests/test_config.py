import pytest
import yaml

from jepa.config import Config, ConfigError, config_from_dict, load_config, parse_overrides

CONFIGS = "configs"


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_validate_and_overrides_apply(tmp_path):
    cfg = load_config(write(tmp_path, "model: {embed_dim: 64, num_heads: 2}\n"),
                      {"training.epochs": "3", "data.dataset": "cifar10", "optim.ema": "[0.99, 1.0]"})
    assert cfg.model.embed_dim == 64 and cfg.training.epochs == 3
    assert cfg.data.dataset == "cifar10" and cfg.optim.ema == (0.99, 1.0)
    assert cfg.name == "c"


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr.*did you mean 'lr'"):
        load_config(write(tmp_path, "optim: {lrr: 0.1}\n"))
    with pytest.raises(ConfigError, match=r"unknown config key 'trainig'.*training"):
        load_config(None, {"trainig.epochs": "1"})


@pytest.mark.parametrize("override, key", [
    ({"masks.pred_scale": "[0.0, 0.2]"}, "masks.pred_scale"),
    ({"masks.enc_scale": "[0.9, 1.2]"}, "masks.enc_scale"),
    ({"optim.lr": "-1"}, "optim.lr"),
    ({"model.patch_size": "5"}, "model.patch_size"),
    ({"model.num_heads": "5"}, "model.num_heads"),
    ({"training.epochs": "two"}, "training.epochs"),
    ({"data.dataset": "imagenet22k"}, "data.dataset"),
    ({"loss.type": "l1"}, "loss.type"),
    ({"model.num_hierarchies": "5"}, "model.num_hierarchies"),
    ({"model.num_hierarchies": "2", "loss.level_weights": "[1, 0.5, 0.25]"}, "loss.level_weights"),
    ({"optim.ema": "[0.999, 0.99]"}, "optim.ema"),
    ({"training.compile": "fast"}, "training.compile"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    assert key in str(e.value)


def test_named_size_fills_dims_and_conflicts_are_errors():
    cfg = load_config(None, {"model.size": "base", "data.image_size": "224", "model.patch_size": "16"})
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads) == (768, 12, 12)
    with pytest.raises(ConfigError, match="conflicts with model.size=base"):
        load_config(None, {"model.size": "base", "model.embed_dim": "512"})


def test_level_weights_default_to_halving():
    cfg = load_config(None, {"model.num_hierarchies": "3"})
    assert cfg.loss.level_weights == [1.0, 0.5, 0.25]


def test_round_trip_through_dict():
    cfg = load_config(None, {"training.epochs": "7"})
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg


def test_parse_overrides_forms():
    assert parse_overrides(["--a.b", "1", "--c.d=x"]) == {"a.b": "1", "c.d": "x"}
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--a.b"])


def test_cli_error_exits_2_with_message(capsys):
    import argparse
    from jepa.config import add_config_args, config_from_cli
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    with pytest.raises(SystemExit) as e:
        config_from_cli(parser, ["--optim.lr", "-3"])
    assert e.value.code == 2
    assert "optim.lr" in capsys.readouterr().err


def test_print_config(capsys):
    import argparse
    from jepa.config import add_config_args, config_from_cli
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    with pytest.raises(SystemExit) as e:
        config_from_cli(parser, ["--print-config", "--training.epochs", "4"])
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["training"]["epochs"] == 4 and isinstance(Config(), Config)


# ------------------------------------------------------------------ schema: Literal choices and field docs


def test_every_config_field_has_a_docstring_and_help_config_lists_it(capsys):
    import dataclasses

    from jepa.config import help_text
    from jepa.config.schema import MixPart, field_docs, sections
    for name, cls in [*sections(), ("data.mix[]", MixPart)]:
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{name}: fields without a docstring: {missing}"
    text = help_text()
    for name, cls in sections():
        for f in dataclasses.fields(cls):
            assert f"  {name}.{f.name} = " in text
    assert "model.attention = auto  (one of auto, xformers, sdpa, math)" in text


@pytest.mark.parametrize("key,owner", [
    ("model.attention", "jepa.models.attention:BACKENDS"),
    ("training.kernels", "jepa_kernels.dispatch:_CHOICES"),
    ("training.precision", "jepa.config.choices:PRECISIONS"),
    ("data.dataset", "jepa.data.datasets:DATASETS"),
    ("eval.features", "jepa.eval:FEATURES"),
    ("eval.encoder", "jepa.export:ENCODERS"),
])
def test_choice_fields_list_exactly_the_choices_of_the_module_that_owns_them(key, owner):
    from jepa.config.choices import PRECISIONS
    from jepa.device import DTYPES
    assert {"auto", *DTYPES} == set(PRECISIONS)  # every precision the config offers has a dtype
    import importlib
    module, name = owner.split(":")
    valid = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError) as e:
        load_config(None, {key: "no_such_choice"})
    assert f"{key}: must be one of {', '.join(valid)}, got 'no_such_choice'" in str(e.value)
    section, field = key.split(".")
    needs = {"shards": {"data.shards": "/data/shard-{0..3}.tar"}, "hf": {"data.hf_path": "/data/x"}}  # needs a key
    for choice in valid:
        assert getattr(getattr(load_config(None, {key: choice, **needs.get(choice, {})}), section), field) == choice


def test_literal_choices_keep_their_type():
    assert load_config(None, {"data.channels": "3"}).data.channels == 3
    with pytest.raises(ConfigError, match=r"data\.channels: must be one of 1, 3, got True"):
        load_config(None, {"data.channels": "true"})
    with pytest.raises(ConfigError, match=r"data\.channels: must be one of 1, 3, got 2"):
        load_config(None, {"data.channels": "2"})
    assert load_config(None, {"training.compile": "max-autotune"}).training.compile == "max-autotune"
    assert load_config(None, {"training.compile": "true"}).training.compile is True
    with pytest.raises(ConfigError, match=r"training\.compile"):
        load_config(None, {"training.compile": "fast"})


# ------------------------------------------------------------------ cross-field rules of issue 23


def hidden_widths(model):
    from jepa.models.vit import MLP
    return {m.fc1.out_features for m in model.modules() if isinstance(m, MLP)}


@pytest.mark.parametrize("over, width", [
    ({"model.mlp_ratio": "0.01"}, "model.pred_dim=96"),  # predictor: int(96 * 0.01) = 0, encoder 1
    ({"model.mlp_ratio": "0.004", "model.pred_dim": "512", "model.pred_heads": "2"}, "model.embed_dim=192"),
])
def test_an_mlp_ratio_that_leaves_no_hidden_units_names_the_ratio_and_width(over, width):
    with pytest.raises(ConfigError) as e:
        load_config(None, over)
    msg = str(e.value)
    assert msg.startswith("model.mlp_ratio: ") and width in msg and "= 0 hidden units" in msg
    assert f"model.mlp_ratio >= {1 / int(width.split('=')[1]):.4g}" in msg


def test_the_smallest_mlp_ratio_allowed_builds_one_hidden_unit():
    from jepa.models import build_model
    cfg = load_config(None, {"model.embed_dim": "32", "model.num_heads": "2", "model.depth": "1",
                             "model.pred_dim": "16", "model.pred_heads": "2", "model.pred_depth": "1",
                             "model.mlp_ratio": str(1 / 16)})
    assert hidden_widths(build_model(cfg)) == {1, 2}


@pytest.mark.parametrize("over, words", [
    ({"loss.level_weights": "[0]"}, "are 0, got [0.0]"),
    ({"model.num_hierarchies": "3", "loss.level_weights": "[0, 0.0, -0.0]"}, "all 3 weights"),
    ({"model.num_hierarchies": "2", "loss.level_weights": "[1, -0.5]"}, "must be in [0, 1e6]"),
    ({"loss.level_weights": "[nan]"}, "finite"),
    ({"loss.level_weights": "[.inf]"}, "finite"),
])
def test_level_weights_that_weigh_nothing_or_are_not_finite_are_refused(over, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, over)
    assert "loss.level_weights" in str(e.value) and words in str(e.value)


def test_level_weights_refused_when_validating_a_built_config():
    from jepa.config import validate
    for weights in ([0.0, 0.0], [float("nan"), 1.0], [1.0, float("inf")], [-1.0, 1.0]):
        cfg = Config()
        cfg.model.num_hierarchies, cfg.loss.level_weights = 2, weights
        with pytest.raises(ConfigError, match=r"^loss\.level_weights: "):
            validate(cfg)
    cfg = load_config(None, {"model.num_hierarchies": "2", "loss.level_weights": "[0, 1]"})
    assert cfg.loss.level_weights == [0.0, 1.0]


@pytest.mark.parametrize("over, batches, source", [
    ({"training.accum_steps": "469"}, 468, "60000 training images of the fashion_mnist train split"),
    ({"data.dataset": "cifar10", "data.batch_size": "1000", "training.accum_steps": "51"}, 50, "cifar10"),
    ({"data.dataset": "synthetic", "data.batch_size": "100", "training.accum_steps": "11"}, 10,
     "1024 training images of data.synthetic_size"),
    ({"data.subset": "500", "data.batch_size": "100", "training.accum_steps": "6"}, 5, "with data.subset=500"),
    ({"data.mix": "[{name: mnist}, {name: synthetic}]", "data.synthetic_size": "40", "data.batch_size": "20000",
      "training.accum_steps": "4"}, 3, "60040 training images of the data.mix datasets"),
])
def test_accum_steps_beyond_the_batches_of_a_known_epoch_are_refused(over, batches, source):
    with pytest.raises(ConfigError) as e:
        load_config(None, over)
    msg = str(e.value)
    assert msg.startswith("training.accum_steps: ") and f"data.batch_size={over.get('data.batch_size', 128)}" in msg
    assert f"only {batches} batch(es)" in msg and f"training.accum_steps <= {batches}" in msg and source in msg
    fits = {**over, "training.accum_steps": str(batches)}
    assert load_config(None, fits).training.accum_steps == batches


def test_a_batch_larger_than_a_known_dataset_is_refused_and_unknown_sizes_wait_for_the_data():
    with pytest.raises(ConfigError, match=r"^data\.batch_size: must be <= the 50000 training images of the cifar10"):
        load_config(None, {"data.dataset": "cifar10", "data.batch_size": "50001"})
    assert load_config(None, {"data.dataset": "imagefolder", "training.accum_steps": "60000"}).training.accum_steps \
        == 60000


def test_the_trainer_names_accum_steps_when_the_loaded_epoch_is_too_short(tmp_path):
    from jepa.data.datasets import load_dataset
    from jepa.train import Trainer
    from small_config import SMALL_BASE
    cfg = load_config(None, {**SMALL_BASE, "data.batch_size": "4", "training.accum_steps": "5"})
    small = load_dataset("synthetic", synthetic_size=16, channels=1, image_size=28)
    with pytest.raises(ConfigError) as e:
        Trainer(cfg, run_dir=tmp_path / "run", dataset=small)
    msg = str(e.value)
    assert msg.startswith("training.accum_steps: 5 micro-batches") and "only 4 batch(es) of data.batch_size=4" in msg
    assert "training.accum_steps <= 4" in msg and not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, key, line", [
    ("? [a, b]\n: 1\n", "[a, b] is a list", 1),
    ("model:\n  depth: 2\n  {x: 1}: 3\n", "{x: 1} is a mapping", 3),
    ("data: {[1, 2]: 3}\n", "[1, 2] is a list", 1),
])
def test_a_mapping_key_that_is_not_a_plain_value_names_the_file_and_key(tmp_path, text, key, line):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: line {line}: the key {key}; config keys are plain names like model or depth"


@pytest.mark.parametrize("key", ["name", "logging.run_dir", "data.root", "model.init_from", "data.download_url"])
def test_a_lone_surrogate_in_a_string_is_refused_naming_the_key(key):
    with pytest.raises(ConfigError) as e:
        load_config(None, {key: "run\udcff"})
    assert str(e.value).startswith(f"{key}: 'run\\udcff' is not valid text") and "UTF-8" in str(e.value)


def test_a_surrogate_escape_in_yaml_or_a_mixture_root_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^name: '\\udcff' is not valid text"):
        load_config(write(tmp_path, 'name: "\\udcff"\n'))
    with pytest.raises(ConfigError, match=r"^data\.mix\[1\]\.root: "):
        load_config(write(tmp_path, 'data:\n  mix: [{name: mnist}, {name: cifar10, root: "d\\ud800"}]\n'))
    assert load_config(write(tmp_path, 'name: "caf\\u00e9 \\U0001F600"\n')).name == "caf\u00e9 \U0001F600"


def test_a_surrogate_from_the_command_line_exits_2_naming_the_key(capsys):
    import argparse
    from jepa.config import add_config_args, config_from_cli
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    with pytest.raises(SystemExit) as e:
        config_from_cli(parser, ["--name", "x\udcff"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: name: 'x\\udcff' is not valid text")
