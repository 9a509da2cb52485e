"""The drafter store: `--drafter PATH|auto|hub:ORG/NAME` (issues 5, 21).

`auto` looks in `cache_dir()/drafters/<target fingerprint>/<method>-<key>/`, where the key hashes the
drafter's configuration and the full training recipe, so a drafter is reused only for the same
target, method, configuration, data and budget. With nothing cached it trains one with the standard
recipe (budget.py), announcing the expected time first; `train=False` (`--no-train`) makes that an
error instead. An interrupted automatic training leaves its checkpoint in that folder and the next
`auto` resumes it.

`hub:ORG/NAME[@REVISION]` is a released drafter fetched through huggingface_hub's cache, and any
folder may hold one as its authors published it: `load_drafter` converts those on the fly
(`specbench.published`), `describe_drafter` records where they came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

from specbench.errors import SpecbenchError
from specbench.targets import cache_dir
from specbench.training.budget import OVERHEAD_MINUTES, STANDARD_CPU, TrainingRecipe
from specbench.training.drafter import Drafter, drafter_class, drafter_provenance


def config_options(cls: type[Drafter], options: dict | None) -> dict:
    """The subset of method options that are fields of the drafter's config (the rest is decoding)."""
    if not options or not dataclasses.is_dataclass(cls.config_class):
        return {}
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    return {k: v for k, v in options.items() if k in names}


#: dataclass field metadata of config fields added after drafters were cached: left out of the store key
#: while at their default, so that the keys of drafters trained before them stay valid
NEW_FIELD = {"store_key": "omit_default"}


def key_fields(config) -> dict:
    """The config fields that key the store (all, but `NEW_FIELD`s at their default)."""
    new = {f.name: f.default for f in dataclasses.fields(config) if f.metadata.get("store_key") == "omit_default"}
    return {k: v for k, v in dataclasses.asdict(config).items() if not (k in new and v == new[k])}


def store_path(target, cls: type[Drafter], options: dict | None = None,
               recipe: TrainingRecipe = STANDARD_CPU) -> Path:
    config = cls.default_config(target, **config_options(cls, options))
    config = key_fields(config) if dataclasses.is_dataclass(config) else dict(config)
    train_config = recipe.train_config(cls).as_dict()
    del train_config["save_at"]  # snapshots along the way do not change the drafter (trainer.py)
    identity = {"class": f"{cls.__module__}:{cls.__qualname__}", "config": config, "recipe": recipe.as_dict(),
                "train_config": train_config}
    if target.chat.system_prompt is not None or target.chat.enable_thinking:  # not the standard rendering
        identity["chat"] = [target.chat.system_prompt, target.chat.enable_thinking]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = cls.method or cls.__name__.lower()
    return cache_dir() / "drafters" / target.fingerprint / f"{name}-{key}"


def resolve_drafter(method: str, target, spec: str | None, train: bool = True, options: dict | None = None,
                    recipe: TrainingRecipe = STANDARD_CPU, progress: bool = True, log=print) -> str | None:
    """A concrete drafter folder for `--drafter spec`: `None`, a drafter folder (specbench's or a published
    one), a folder of drafters named after their methods (`DIR/eagle3/`, `DIR/flexdraft/`...: one
    `--drafter` for a whole sweep of drafters trained elsewhere), `hub:ORG/NAME` (its local snapshot) or
    `auto`."""
    if spec is None:
        return None
    from specbench.published import HUB_PREFIX, hub_folder

    hub = spec.startswith(HUB_PREFIX)
    folder = spec != "auto" and not hub and Path(spec).is_dir() and not (Path(spec) / "config.json").exists()
    if spec != "auto" and not folder and not hub:
        return spec
    if ":" not in method:
        from specbench.methods import method_class

        if not method_class(method).needs_drafter:
            return None  # `--drafter auto` (or a folder of drafters) across a sweep also reaches ar, pld...
    if hub:
        return str(hub_folder(spec))
    if folder:
        sub = Path(spec) / method
        if not (sub / "config.json").exists():
            raise SpecbenchError(f"{spec} is neither a drafter nor a folder of drafters with a {method}/ drafter")
        return str(sub)
    with default_chat(target):
        return _auto(drafter_class(method), method, target, train, options, recipe, progress, log)


def load_drafter(cls: type[Drafter], path: str, target) -> Drafter:
    """The drafter in folder `path` for `target`: a specbench drafter, or a published checkpoint converted
    on the fly (issue 21)."""
    from specbench import published

    if published.is_published(path):
        return published.load_published(cls.method, path, target)
    return cls.load(path, target)


def describe_drafter(path: str) -> dict | None:
    """The run manifest's `drafter` block: how a specbench drafter was trained, or which release (source,
    revision, file hashes) a published folder is."""
    from specbench import published

    return published.describe(path) if published.is_published(path) else drafter_provenance(path)


def _auto(cls, method, target, train, options, recipe, progress, log) -> str:
    from specbench.training.data import parse_data_spec
    from specbench.training.pipeline import train_drafter
    from specbench.training.regen import RegenSettings, missing_prompts

    path = store_path(target, cls, options, recipe)
    if (path / "config.json").exists():
        log(f"--drafter auto: using {path}")
        return str(path)
    what = f"{method} drafter for {target.name} (fingerprint {target.fingerprint})"
    if not train:
        raise SpecbenchError(f"no cached {what} in {path.parent}; train one with `specbench train --method {method} "
                             f"--target {target.name}` or drop --no-train")
    resumed = (path / "checkpoint").exists() or (path / "checkpoint.old").exists()
    expected = (f"about {recipe.budget_minutes + OVERHEAD_MINUTES:.0f} minutes" if recipe.budget_minutes
                else f"{recipe.steps} steps")
    missing = missing_prompts(target, parse_data_spec(recipe.data), RegenSettings(recipe.max_new_tokens))
    if missing:
        expected += f", after generating {missing} responses of up to {recipe.max_new_tokens} tokens"
    log(f"--drafter auto: no cached {what}; {'resuming' if resumed else 'training'} one with the standard "
        f"recipe ({recipe.describe()}): expected {expected}. Pass --no-train to fail instead.")
    return str(train_drafter(cls, target, path, recipe, options=config_options(cls, options), progress=progress,
                             log=log))


@contextmanager
def default_chat(target):
    """The standard recipe renders prompts as the shipped corpus does: template default system prompt,
    thinking off (DESIGN.md §9), whatever system prompt the run itself uses."""
    saved = (target.chat.system_prompt, target.chat.enable_thinking)
    target.chat.system_prompt, target.chat.enable_thinking = None, False
    try:
        yield
    finally:
        target.chat.system_prompt, target.chat.enable_thinking = saved
