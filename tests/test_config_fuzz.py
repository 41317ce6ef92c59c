"""Invalid configs, generated for every field and read from files: each is a ConfigError that names the key."""
import dataclasses
import math
import string
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
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


@pytest.mark.parametrize("override, key, words", [
    ({"masks.min_keep": "40"}, "masks.min_keep", "smallest context block"),
    ({"masks.pred_scale": "[0.9, 1.0]"}, "masks.npred", "leaving it no context"),
    ({"masks.npred": "40"}, "masks.npred", "leaving it no context"),
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
    cfg = load_config(None, {"masks.min_keep": "36"})  # the smallest context block is 6x6
    assert cfg.masks.min_keep == 36
    cfg = load_config(None, {"masks.min_keep": "4", "masks.npred": "6"})  # 6 blocks can tile 7x7, but rarely do
    assert cfg.masks.npred == 6
    assert load_config(None, {"masks.npred": "12", "masks.allow_overlap": "true", "masks.min_keep": "4"}).masks.npred == 12
    assert math.isfinite(load_config(None, {"optim.eps": "1e-6"}).optim.eps)
