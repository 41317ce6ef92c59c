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
    ("training.precision", "jepa.device:PRECISIONS"),
    ("data.dataset", "jepa.datasets:DATASETS"),
    ("eval.features", "jepa.eval:FEATURES"),
    ("eval.encoder", "jepa.export:ENCODERS"),
])
def test_choice_fields_list_exactly_the_choices_of_the_module_that_owns_them(key, owner):
    import importlib
    module, name = owner.split(":")
    valid = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError) as e:
        load_config(None, {key: "no_such_choice"})
    assert f"{key}: must be one of {', '.join(valid)}, got 'no_such_choice'" in str(e.value)
    section, field = key.split(".")
    needs = {"shards": {"data.shards": "/data/shard-{0..3}.tar"}}  # a choice that needs another key
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
