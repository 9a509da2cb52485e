"""methods/base.py: one option contract for every trainable method.

Decode options are the method's own; every other option is a drafter option, fixed when the drafter
was trained. A drafter given with a clashing drafter option is refused with the same message for every
method, and an option that is neither is refused before any drafter is loaded.
"""

from __future__ import annotations

import pytest
import torch

from specbench.errors import SpecbenchError
from specbench.methods import METHODS, build_method, method_class
from specbench.methods.base import SWITCH, integer, number, one_of, option_bool
from specbench.testing import lossless
from specbench.training.store import store_path

#: method -> (drafter option, value the fresh drafter is built with)
TRAINED = {"bita": ("num_masks", 2), "dflash": ("block_size", 4), "eagle3": ("ttt_steps", 3),
           "flexdraft": ("block_size", 4), "mtp": ("rank", 4)}


def fresh_drafter(method: str, target):
    key, value = TRAINED[method]
    torch.manual_seed(0)
    return method_class(method).drafter_class.for_target(target, **{key: value}).eval()


@pytest.mark.parametrize("method", sorted(TRAINED))
def test_a_drafter_option_must_match_the_trained_drafter(method):
    target = lossless.load_tiny("tiny-random-llama")
    key, value = TRAINED[method]
    build_method(method, target, drafter=fresh_drafter(method, target), **{key: value})  # same value: accepted
    with pytest.raises(SpecbenchError, match=f"fixed at training time: {key}={value + 1} \\(trained with {value}\\)"):
        build_method(method, target, drafter=fresh_drafter(method, target), **{key: value + 1})


@pytest.mark.parametrize("method", sorted(TRAINED))
def test_an_unknown_option_names_both_kinds(method):
    target = lossless.load_tiny("tiny-random-llama")
    cls = method_class(method)
    with pytest.raises(SpecbenchError, match=f"{method} takes decode options .* and drafter options .*"
                                             f"{TRAINED[method][0]}.*got \\['warp_speed'\\]"):
        build_method(method, target, drafter=fresh_drafter(method, target), warp_speed=9)
    assert TRAINED[method][0] in cls.drafter_option_names()


def test_a_missing_drafter_has_one_message():
    target = lossless.load_tiny("tiny-random-llama")
    for method in TRAINED:
        with pytest.raises(SpecbenchError, match=f"{method} needs a trained drafter"):
            build_method(method, target)


def test_switches_read_one_way_and_refuse_other_words():
    assert [option_bool(v, "x") for v in (True, "true", " Yes", "1", "on", 1)] == [True] * 6
    assert [option_bool(v, "x") for v in (False, "false", "NO", "0", "off", 0)] == [False] * 6
    with pytest.raises(SpecbenchError, match="sampler must be true or false, got 'maybe'"):
        option_bool("maybe", "sampler")
    target = lossless.load_tiny("tiny-random-llama")
    for method, switch in (("flexdraft", "calibration"), ("mtp", "sampler")):
        with pytest.raises(SpecbenchError, match=f"{method} option {switch} takes true or false, got 'nope'"):
            build_method(method, target, drafter=fresh_drafter(method, target), **{switch: "nope"})


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_option_refuses_a_bad_value_by_name(method):
    """Issue 23: each decode and drafter option of each method, given a value it cannot take, is refused in
    one SpecbenchError naming it, by its kind (`split_options`) or by the drafter's config (`store_path`),
    before a drafter is trained or loaded."""
    target = lossless.load_tiny("tiny-random-llama")
    cls = method_class(method)
    names = [*cls.DECODE_OPTIONS, *cls.drafter_option_names()]
    assert bool(names) == (method != "ar")
    for key in names:
        with pytest.raises(SpecbenchError, match=key):
            cls.split_options({key: "abc"})
            store_path(target, cls.drafter_class, {key: "abc"})
    with pytest.raises(SpecbenchError, match=f"{method} takes .*got \\['warp_speed'\\]"):
        cls.split_options({"warp_speed": 1})


def test_option_kinds_type_what_they_accept():
    assert integer(1).parse("8") == 8 and integer(1).parse(8.0) == 8 and number(0).parse("0.5") == 0.5
    assert SWITCH.parse("off") is False and one_of("a", "b").parse("b") == "b"
    for kind, bad in ((integer(1), 0), (integer(), 2.5), (integer(), True), (number(0), -1), (number(), "nan"),
                      (SWITCH, 2), (one_of("a", "b"), "c")):
        with pytest.raises((TypeError, ValueError)):
            kind.parse(bad)
    assert method_class("flexdraft").split_options({"threshold": "0", "no_calibration": True}) == {
        "mode": "flex", "calibration": False, "threshold": 0.0, "batch_threshold": None, "draft_sampling": "greedy"}
