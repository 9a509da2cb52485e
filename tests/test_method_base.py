"""methods/base.py: one option contract for every trainable method.

Decode options are the method's own; every other option is a drafter option, fixed when the drafter
was trained. A drafter given with a clashing drafter option is refused with the same message for every
method, and an option that is neither is refused before any drafter is loaded.
"""

from __future__ import annotations

import pytest
import torch

from specbench.errors import SpecbenchError
from specbench.methods import build_method, method_class
from specbench.methods.base import option_bool
from specbench.testing import lossless

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
