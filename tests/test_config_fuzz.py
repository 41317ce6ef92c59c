"""Invalid configs, generated for every field and read from files: each is a ConfigError that names the key."""
import dataclasses
import math
import string
import typing

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jepa.config import ConfigError, load_config
from jepa.config.schema import sections
from jepa.config.validate import FLOAT_RANGES, INT_RANGES

YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"}  # YAML reads some as bool


def fields():
    """``(path, type)`` of every scalar or list field of the config."""
    out = [("name", str)]
    for name, cls in sections():
        hints = typing.get_type_hints(cls)
        out += [(f"{name}.{f.name}", hints[f.name]) for f in dataclasses.fields(cls)]
    return out


FIELDS = fields()
garbage_words = st.text(string.ascii_letters + "_-", min_size=1, max_size=12).filter(lambda s: s.lower() not in YAML_WORDS)
not_finite = st.sampled_from(["nan", ".nan", "inf", "-inf", ".inf", "-.inf", "1e999"])
huge_ints = st.integers(min_value=2 ** 63).map(str) | st.integers(max_value=-(2 ** 63) - 1).map(str)
containers = st.sampled_from(["[1, 2]", "{a: 1}", "[]", "{}"])
unparsable = st.sampled_from(["[0.3", "{a: [1", "!!python/object:os.system {}", "!!binary x", "[1, 2]]"])


def base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return base_type(args[0]) if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp


def invalid_values(path: str, tp) -> st.SearchStrategy:
    """Values that no setting of any other key can make valid for ``path``."""
    tp = base_type(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Literal or (origin is typing.Union and path == "training.compile"):
        choices = {str(c) for a in typing.get_args(tp) for c in (typing.get_args(a) or [a])}
        return garbage_words.filter(lambda s: s not in choices) | containers | st.sampled_from(["3.5", "-1"])
    if origin is tuple:
        ordered = path != "optim.betas"  # every pair but the betas is [low, high]
        bad_pairs = st.sampled_from(["[1]", "[1, 2, 3]", "[nan, 1]", "[0.5, inf]", "[a, b]", "0.5", "[-1, -2]"]
                                    + (["[0.9, 0.1]"] if ordered else ["[1.0, 0.5]"]))
        return bad_pairs | unparsable | garbage_words
    if origin is list:
        if path == "data.mix":
            return st.sampled_from(["[{name: nope}]", "[{name: mnist, weight: -1}]", "[{name: mnist, weight: nan}]",
                                    "[{weight: 1}]", "[{name: mnist, colour: red}]", "[3]", "{name: mnist}"])
        return st.sampled_from(["[nan]", "[inf, 1]", "[a]", "[1e9]", "{a: 1}", "[[1]]"]) | unparsable
    if tp is bool:
        return garbage_words | st.sampled_from(["2", "0.5", "-1"]) | containers
    if tp is int:
        lo, hi = INT_RANGES.get(path, (None, None))
        out = garbage_words | containers | huge_ints | not_finite | st.sampled_from(["1.5", "true"])
        if lo is not None:
            out |= st.integers(max_value=lo - 1, min_value=lo - 10 ** 6).map(str)
            out |= st.integers(min_value=hi + 1, max_value=hi + 10 ** 6).map(str)
        return out
    if tp is float:
        lo, hi, lo_open = FLOAT_RANGES[path]
        below = st.floats(max_value=lo, exclude_max=not lo_open, min_value=lo - 1e6, allow_nan=False)
        above = st.floats(min_value=hi, exclude_min=True, max_value=hi * 1e6, allow_nan=False, allow_infinity=False)
        return garbage_words | containers | not_finite | below.map(repr) | above.map(repr) | st.just("true")
    if tp is str:
        if path == "training.device":
            return st.sampled_from(["cuda:", "cuda:abc", "cuda:-1", "cuda:1.5", "tpu", "CPU", "gpu", "cuda:99999"]) \
                | containers
        return containers
    raise AssertionError(f"no invalid values for {path} ({tp})")


def test_every_field_has_invalid_values():
    for path, tp in FIELDS:
        assert invalid_values(path, tp) is not None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_an_invalid_value_for_any_field_is_a_config_error_naming_it(data):
    path, tp = data.draw(st.sampled_from(FIELDS), label="field")
    value = data.draw(invalid_values(path, tp), label="value")
    with pytest.raises(ConfigError) as e:
        load_config(None, {path: value})
    assert path in str(e.value), f"--{path} {value!r}: {e.value}"


@pytest.mark.parametrize("text, words", [
    ("[]", "top level must be a mapping"), ("0", "top level must be a mapping"),
    ("false", "top level must be a mapping"), ("''", "top level must be a mapping"),
    ("", "an empty file"),
    ("model:\n  depth: 2\n  depth: 3\n", "given twice"),
    ("model: {depth: 2}\nmodel: {depth: 3}\n", "given twice"),
    ("model: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("model: {depth: [1\n", "not valid YAML"),
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n", "aliases are expanded"),
    ("model:\n  depth: " + "[" * 40 + "]" * 40 + "\n", "nested deeper"),
    ("model: ~\n", "model"),
])
def test_bad_config_files_are_config_errors(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words) as e:
        load_config(path)
    assert str(path) in str(e.value) or "model" in str(e.value)


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_overriding_into_a_section_that_is_not_a_mapping_names_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: ~\n")
    with pytest.raises(ConfigError, match=r"model: the section must be a mapping"):
        load_config(path, {"model.depth": "3"})


MASK_GEOMETRY = [
    ({"masks.min_keep": "40"}, "masks.min_keep", "smallest context block"),
    ({"masks.pred_scale": "[0.9, 1.0]"}, "masks.npred", "leaving it no context"),
    ({"masks.npred": "40"}, "masks.npred", "leaving it no context"),
]


@pytest.mark.parametrize("override, key, words", MASK_GEOMETRY)
def test_mask_geometry_is_decided_when_the_sampler_is_built(override, key, words):
    """The block-size rule and the trial of the sampler run where the sampler is built, not in jepa.config."""
    from jepa.data import build_mask_sampler
    cfg = load_config(None, {"masks.min_keep": "4", **override})  # the 7x7 grid of the defaults
    with pytest.raises(ConfigError) as e:
        build_mask_sampler(cfg)
    assert key in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("override, key, words", MASK_GEOMETRY)
def test_the_training_stream_refuses_the_mask_geometry_before_reading_data(tmp_path, override, key, words):
    from jepa.data import TrainBatches
    cfg = load_config(None, {"masks.min_keep": "4", "data.dataset": "imagefolder", "data.root": str(tmp_path / "none"),
                             **override})
    with pytest.raises(ConfigError) as e:
        TrainBatches(cfg)  # what the trainer builds; the missing image folder is never looked at
    assert str(e.value).startswith(f"{key}: ") and words in str(e.value)


@pytest.mark.parametrize("override, key, words", [
    ({"model.patch_size": "28"}, "model.patch_size", "1x1 patch grid"),
    ({"data.batch_size": "64", "data.subset": "32"}, "data.batch_size", "data.subset=32"),
    ({"data.dataset": "synthetic", "data.synthetic_size": "16", "data.batch_size": "32"}, "data.batch_size",
     "synthetic_size=16"),
    ({"data.synthetic_size": "0"}, "data.synthetic_size", "1.."),
    ({"optim.eps": "0"}, "optim.eps", "(0"),
    ({"training.seed": str(2 ** 64)}, "training.seed", "64 bits"),
])
def test_cross_field_rules_are_decided_from_the_config(override, key, words):
    base = {"masks.min_keep": "4"}  # the 7x7 grid of the defaults
    with pytest.raises(ConfigError) as e:
        load_config(None, {**base, **override})
    assert key in str(e.value) and words in str(e.value)


def test_the_rules_accept_what_the_sampler_can_do():
    from jepa.data import build_mask_sampler
    cfg = load_config(None, {"masks.min_keep": "36"})  # the smallest context block is 6x6
    assert cfg.masks.min_keep == 36 and build_mask_sampler(cfg).min_keep == 36
    cfg = load_config(None, {"masks.min_keep": "4", "masks.npred": "6"})  # 6 blocks can tile 7x7, but rarely do
    assert cfg.masks.npred == 6 and build_mask_sampler(cfg).npred == 6
    cfg = load_config(None, {"masks.npred": "12", "masks.allow_overlap": "true", "masks.min_keep": "4"})
    assert cfg.masks.npred == 12 and build_mask_sampler(cfg).npred == 12
    assert math.isfinite(load_config(None, {"optim.eps": "1e-6"}).optim.eps)


# ------------------------------------------------------------------ cross-field rules, drawn together

CROSS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRAIN_IMAGES = {"fashion_mnist": 60000, "mnist": 60000, "cifar10": 50000}


def load_or_error(over: dict):
    """The validated config, or the ConfigError's message (the statistics count which key refused)."""
    try:
        cfg = load_config(None, over)
    except ConfigError as e:
        event(f"refused: {str(e).split(':')[0]}")
        return None, str(e)
    event("valid")
    return cfg, None


@CROSS
@given(embed=st.integers(1, 48), pred=st.integers(1, 48),
       ratio=st.floats(1e-3, 1.5) | st.integers(1, 48).map(lambda w: 1 / w) | st.sampled_from([0.02, 0.5, 1.0]))
def test_mlp_ratio_against_both_widths_validates_and_builds_or_names_the_ratio(embed, pred, ratio):
    from jepa.models import build_model
    from jepa.models.vit import MLP
    over = {"model.embed_dim": str(embed), "model.num_heads": "1", "model.depth": "1", "model.pred_dim": str(pred),
            "model.pred_heads": "1", "model.pred_depth": "1", "model.mlp_ratio": repr(ratio)}
    cfg, error = load_or_error(over)
    fits = int(embed * ratio) >= 1 and int(pred * ratio) >= 1
    assert (cfg is not None) == fits, f"{over}: {error}"
    if cfg is None:
        assert error.startswith("model.mlp_ratio: ") and "= 0 hidden units" in error
        return
    widths = {m.fc1.out_features for m in build_model(cfg).modules() if isinstance(m, MLP)}
    assert widths == {int(embed * ratio), int(pred * ratio)} and min(widths) >= 1


def as_number(value) -> float:
    """What the config reads from a YAML value for a float field; NaN where it reads no number."""
    try:
        return float(value)
    except ValueError:
        return math.nan


@CROSS
@given(levels=st.integers(1, 4),
       weights=st.lists(st.sampled_from(["0", "0.0", "-0.0", "1", "0.5", "1e-300", "1e6", "-1", "2e6", ".nan",
                                         "-.inf", "x"]), min_size=1, max_size=4))
def test_level_weights_against_the_levels_validate_or_name_the_weights(levels, weights):
    over = {"model.num_hierarchies": str(levels), "loss.level_weights": f"[{', '.join(weights)}]"}
    cfg, error = load_or_error(over)
    numbers = [as_number(yaml.safe_load(w)) for w in weights]
    fits = len(weights) == levels and all(0 <= w <= 1e6 for w in numbers) and any(w > 0 for w in numbers)
    assert (cfg is not None) == fits, f"{over}: {error}"
    if cfg is None:
        assert error.startswith("loss.level_weights"), error
    else:
        assert cfg.loss.level_weights == numbers and sum(cfg.loss.level_weights) > 0


data_sources = st.one_of(
    st.fixed_dictionaries({"data.dataset": st.just("synthetic"), "data.synthetic_size": st.integers(1, 300)}),
    st.fixed_dictionaries({"data.dataset": st.sampled_from(sorted(TRAIN_IMAGES) + ["imagefolder"])}),
    st.fixed_dictionaries({"data.mix": st.sampled_from(["[{name: mnist}, {name: synthetic}]",
                                                        "[{name: cifar10}, {name: imagefolder}]"]),
                           "data.synthetic_size": st.integers(1, 300)}),
).map(lambda d: {k: str(v) for k, v in d.items()})


def epoch_images(over: dict) -> int | None:
    """Training images per epoch the config alone gives (one process), as the issue's rules count them."""
    names = ([p.split(": ")[1] for p in over["data.mix"][2:-2].split("}, {")] if "data.mix" in over
             else [over["data.dataset"]])
    sizes = [int(over["data.synthetic_size"]) if n == "synthetic" else TRAIN_IMAGES.get(n) for n in names]
    if None in sizes:
        return None
    subset = int(over.get("data.subset", 2 ** 62))
    return sum(min(n, subset) for n in sizes)


@CROSS
@given(source=data_sources, batch=st.integers(1, 400) | st.sampled_from([20000, 50001, 60000]),
       accum=st.integers(1, 40) | st.sampled_from([469, 60000]), subset=st.none() | st.integers(1, 500))
def test_accum_steps_against_the_epoch_validates_and_loads_or_names_the_key(source, batch, accum, subset):
    from jepa.data import TrainBatches
    over = {**source, "data.batch_size": str(batch), "training.accum_steps": str(accum), "masks.min_keep": "4"}
    if subset is not None:
        over["data.subset"] = str(subset)
    cfg, error = load_or_error(over)
    images = epoch_images(over)
    fits = (subset is None or batch <= subset) and (images is None or accum <= images // batch)
    if "data.mix" not in over and over["data.dataset"] == "synthetic":
        fits = fits and batch <= int(over["data.synthetic_size"])
    assert (cfg is not None) == fits, f"{over}: {error}"
    if cfg is None:
        assert error.startswith(("training.accum_steps: ", "data.batch_size: ")), error
        if error.startswith("training.accum_steps: "):
            assert f"data.batch_size={batch}" in error and f"only {images // batch} batch(es)" in error
    elif "data.mix" not in over and over["data.dataset"] == "synthetic":
        assert TrainBatches(cfg).batches_per_epoch >= accum  # what the trainer divides by accum_steps
        event("loaded")


STR_KEYS = [path for path, tp in FIELDS if base_type(tp) is str] + ["data.mix[0].root"]
surrogates = st.integers(0xD800, 0xDFFF).map(chr)


@CROSS
@given(key=st.sampled_from(STR_KEYS), head=st.text(max_size=6), tail=st.text(max_size=6),
       bad=st.none() | surrogates, by_file=st.booleans())
def test_strings_that_are_not_utf8_are_refused_naming_the_key_from_cli_or_file(tmp_path_factory, key, head, tail, bad,
                                                                                by_file):
    value = head + (bad or "") + tail
    path = None
    if key == "data.mix[0].root":
        raw = {"data": {"mix": [{"name": "mnist", "root": value}]}}
    else:
        section, _, name = key.rpartition(".")
        raw = {section: {name: value}} if section else {name: value}
    if by_file:  # YAML's escapes spell the surrogate: "\udcff"
        path = tmp_path_factory.mktemp("c") / "c.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=False), encoding="utf-8")
    elif key == "data.mix[0].root":
        over = {"data.mix": [{"name": "mnist", "root": value}]}
    else:
        over = {key: value}
    try:
        cfg = load_config(path) if by_file else load_config(None, over)
    except ConfigError as e:
        assert key in str(e), f"{key}={value!r}: {e}"
        assert bad is None or str(e).startswith(f"{key}: {value!r} is not valid text"), str(e)
        return
    assert bad is None, f"{key}={value!r} was accepted"
    yaml.safe_dump(cfg.to_dict(), allow_unicode=True).encode("utf-8")  # what a run writes beside its checkpoints


@CROSS
@given(section=st.sampled_from([None] + [name for name, _ in sections()]),
       key=st.lists(st.integers(0, 9) | garbage_words, min_size=0, max_size=3).map(lambda k: f"[{', '.join(map(str, k))}]")
       | st.dictionaries(garbage_words, st.integers(0, 9), max_size=2).map(
           lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"))
def test_a_key_that_is_a_list_or_mapping_names_the_file_and_key(tmp_path_factory, section, key):
    path = tmp_path_factory.mktemp("c") / "c.yaml"
    text = f"? {key}\n: 1\n" if section is None else f"{section}:\n  ? {key}\n  : 1\n"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    line = 1 if section is None else 2
    assert str(e.value).startswith(f"{path}: line {line}: the key {key} is a "), str(e.value)
