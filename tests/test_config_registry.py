"""Each method declares its own config keys, their ranges and its label (pretrain/methods/), and
the assembled config is the one the project has always had: tests/golden/ holds the default
config's YAML dump and the ordered ranges as they were when the keys still lived in
pretrain/config/defaults.py and pretrain/config/checks.py. A change of a default shows here
first; update the golden file with it."""

import os

import pytest
import yaml

from helpers import ROOT
from pretrain.config.checks import CHOICES, FREE_TEXT, RANGES, keys_of_type, numeric_keys
from pretrain.config.defaults import _C as GENERAL_DEFAULTS
from pretrain.config.defaults import get_cfg
from pretrain.methods import METHODS, method_label

GOLDEN = os.path.join(ROOT, "tests", "golden")


def flatten(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def declared_keys(method):
    """{key: default} that ``method.add_config`` adds to the general keys, after checking that
    it leaves every general key as it was."""
    cfg = GENERAL_DEFAULTS.clone()
    method.add_config(cfg)
    general, merged = flatten(GENERAL_DEFAULTS), flatten(cfg)
    assert {k: merged[k] for k in general} == general, f"{method.name} changes a general key"
    return {k: v for k, v in merged.items() if k not in general}


def test_default_config_dump_is_unchanged():
    with open(os.path.join(GOLDEN, "pretrain_defaults.yaml")) as f:
        assert get_cfg().dump() == f.read()


def test_ranges_are_unchanged_in_their_order():
    with open(os.path.join(GOLDEN, "pretrain_ranges.yaml")) as f:
        assert [f"{key}: {values}" for key, values in RANGES.items()] == yaml.safe_load(f)


def test_every_method_key_is_declared_by_one_method_only():
    owners = {}
    for name, method in METHODS.items():
        for key in declared_keys(method):
            owners.setdefault(key, []).append(name)
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}
    # Together with the general keys they are the whole config.
    merged = flatten(get_cfg())
    assert set(merged) == set(flatten(GENERAL_DEFAULTS)) | set(owners)
    assert owners["PSKD.TOPK"] == ["pskd"] and owners["AUG.CUTMIX.PSKD_MODE"] == ["pskd"]
    assert owners["LS.EPSILON"] == ["ls"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_gives_the_range_of_each_numeric_key_it_declares(name):
    method = METHODS[name]
    keys = declared_keys(method)
    numeric = {k for k, v in keys.items() if type(v) in (int, float)}
    assert set(method.config_ranges) == numeric
    for key, values in method.config_ranges.items():
        assert keys[key] in values, f"{key}'s default {keys[key]} is not {values}"


def test_general_ranges_name_no_method_key():
    method_keys = {k for m in METHODS.values() for k in declared_keys(m)}
    general = set(numeric_keys(GENERAL_DEFAULTS))
    assert set(RANGES) == general | {k for m in METHODS.values() for k in m.config_ranges}
    assert not general & method_keys


def test_labels_come_from_the_methods():
    labels = [method.label for method in METHODS.values()]
    assert all(labels) and len(set(labels)) == len(labels)
    assert method_label("pskd") == "PS-KD" and method_label("PSKD", cutmix=True) == "PS-KD + CutMix"
    assert method_label("cskd") == "CS-KD" and method_label("baseline") == "Baseline"
    assert method_label("my_method") == "my_method"  # not a method of the registry: as it is


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_gives_the_choices_of_each_option_it_declares(name):
    method = METHODS[name]
    keys = declared_keys(method)
    text = {k for k, v in keys.items() if type(v) is str}
    assert set(method.config_choices) == text
    for key, values in method.config_choices.items():
        assert keys[key] in values, f"{key}'s default {keys[key]!r} is not {values}"


def test_every_text_key_is_an_option_with_its_choices_or_a_path_or_name():
    text = set(keys_of_type(get_cfg(), (str,)))
    assert set(CHOICES) | FREE_TEXT == text and not set(CHOICES) & FREE_TEXT
    general = set(keys_of_type(GENERAL_DEFAULTS, (str,)))
    assert set(CHOICES) - FREE_TEXT - general == {
        k for m in METHODS.values() for k in m.config_choices
    }
