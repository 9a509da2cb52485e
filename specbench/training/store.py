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

`SPEC@POINT` names the `--save-at` snapshot POINT (`min-005.0`, `step-000200`, ...) of the drafter SPEC
resolves to, and `SPEC@final` SPEC itself: learning-curve sweeps (issue 22) name their cells this way,
with no machine-specific path (`auto@min-005.0`). A snapshot is never trained on demand.
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
    chosen = config_options(cls, options)
    try:
        config = cls.default_config(target, **chosen)
    except (TypeError, ValueError) as e:  # values the config cannot take: one line (issue 23)
        raise SpecbenchError(f"{cls.method or cls.__name__} drafter options "
                             f"{', '.join(f'{k}={v!r}' for k, v in chosen.items())} are not valid: {e}") from None
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


FINAL = "final"


def split_snapshot(spec: str) -> tuple[str, str | None]:
    """`"auto@min-005.0"` -> ("auto", "min-005.0"); a spec without `@` (or an existing path) -> (spec, None)."""
    if "@" not in spec or Path(spec).exists():
        return spec, None
    base, _, point = spec.rpartition("@")
    if not base or not point or "/" in point:
        raise SpecbenchError(f"--drafter {spec!r}: a snapshot is named SPEC@POINT, e.g. auto@min-005.0 or DIR@final")
    return base, point


def resolve_drafter(method: str, target, spec: str | None, train: bool = True, options: dict | None = None,
                    recipe: TrainingRecipe = STANDARD_CPU, progress: bool = True, log=print) -> str | None:
    """A concrete drafter folder for `--drafter spec`: `None`, a drafter folder (specbench's or a published
    one), a folder of drafters named after their methods (`DIR/eagle3/`, `DIR/flexdraft/`...: one
    `--drafter` for a whole sweep of drafters trained elsewhere), `hub:ORG/NAME[@REVISION]` (its local
    snapshot), `auto`, or any but `hub:` with `@POINT` (one of its `--save-at` snapshots). No `--drafter`
    for a method that needs one means `auto` (issue 23: `specbench run --method flexdraft --suite gsm8k`
    works as typed). A registered method's `-o` options are checked first, so a typo fails in one line
    before any training starts."""
    from specbench.published import HUB_PREFIX, hub_folder

    method_cls = None
    if ":" not in method:
        from specbench.methods import method_class

        method_cls = method_class(method)
        method_cls.split_options(options or {})
    if spec is None and (method_cls is None or not method_cls.needs_drafter):
        return None
    defaulted, spec = spec is None, spec or "auto"
    hub = spec.startswith(HUB_PREFIX)  # its `@` is a revision, not a snapshot
    base, point = (spec, None) if hub else split_snapshot(spec)
    if point is not None:
        return _snapshot(method, target, base, point, options, recipe, log)
    folder = spec != "auto" and not hub and Path(spec).is_dir() and not (Path(spec) / "config.json").exists()
    if spec != "auto" and not folder and not hub:
        return spec
    if method_cls is not None and not method_cls.needs_drafter:
        return None  # `--drafter auto` (or a folder of drafters) across a sweep also reaches ar, pld...
    if hub:
        return str(hub_folder(spec))
    if folder:
        sub = Path(spec) / method
        if not (sub / "config.json").exists():
            raise SpecbenchError(f"{spec} is neither a drafter nor a folder of drafters with a {method}/ drafter")
        return str(sub)
    with default_chat(target):
        return _auto(drafter_class(method), method, target, train, options, recipe, progress, log, defaulted)


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


def _auto(cls, method, target, train, options, recipe, progress, log, defaulted: bool = False) -> str:
    from specbench.training.pipeline import train_drafter

    path = store_path(target, cls, options, recipe)
    how = "--drafter auto" + (" is the default; --drafter PATH picks another" if defaulted else "")
    if (path / "config.json").exists():
        log(f"{method}: using the stored standard drafter {path} ({how})")
        return str(path)
    what = f"{method} drafter for {target.name} (fingerprint {target.fingerprint})"
    if not train:
        raise SpecbenchError(f"no cached {what} in {path.parent}; train one with `specbench train --method {method} "
                             f"--target {target.name}` or drop --no-train")
    resumed = (path / "checkpoint").exists() or (path / "checkpoint.old").exists()
    log(f"{method}: no stored {what}; {'resuming' if resumed else 'training'} one once with the standard recipe "
        f"({recipe.describe()}) into {path}: expected {expected_training(target, recipe)[1]}. {how}; "
        "--no-train fails instead.")
    return str(train_drafter(cls, target, path, recipe, options=config_options(cls, options), progress=progress,
                             log=log))


def expected_training(target, recipe: TrainingRecipe = STANDARD_CPU) -> tuple[float | None, str]:
    """(minutes or None, words) an automatic training run takes on this machine alone: the budget (wall
    time on a GPU, CPU time per thread on a CPU: the same on an idle machine), plus data preparation and the
    final eval; responses still to generate are named, not timed."""
    from specbench.training.data import parse_data_spec
    from specbench.training.regen import RegenSettings, missing_prompts

    minutes = recipe.budget_minutes + OVERHEAD_MINUTES if recipe.budget_minutes else None
    words = f"about {minutes:.0f} minutes on this machine" if minutes else f"{recipe.steps} steps"
    missing = missing_prompts(target, parse_data_spec(recipe.data), RegenSettings(recipe.max_new_tokens))
    if missing:
        words += f", after generating {missing} responses of up to {recipe.max_new_tokens} tokens"
    return minutes, words


def missing_drafter(method: str, target, options: dict | None = None, recipe: TrainingRecipe = STANDARD_CPU) -> bool:
    """Whether `--drafter auto` would have to train this method's drafter first (sweep estimates)."""
    with default_chat(target):
        return not (store_path(target, drafter_class(method), options, recipe) / "config.json").exists()
def _snapshot(method, target, base, point, options, recipe, log) -> str | None:
    from specbench.training.pipeline import SNAPSHOTS

    if ":" not in method:
        from specbench.methods import method_class

        if not method_class(method).needs_drafter:
            return None
    if base == "auto":
        with default_chat(target):
            path = store_path(target, drafter_class(method), options, recipe)
        if not (path / "config.json").exists():
            raise SpecbenchError(f"no cached {method} drafter for {target.name} in {path.parent} to take snapshot "
                                 f"{point} from; train one with `specbench train --method {method} --save-at ...`")
        base = str(path)
    folder = resolve_drafter(method, target, base, train=False, options=options, recipe=recipe, log=log)
    if folder is None or point == FINAL:
        return folder
    snapshot = Path(folder) / SNAPSHOTS / point
    if not (snapshot / "config.json").exists():
        have = sorted(p.parent.name for p in (Path(folder) / SNAPSHOTS).glob("*/config.json"))
        raise SpecbenchError(f"{folder} has no snapshot {point!r} (it has: {', '.join(have) or 'none'}; "
                             f"`specbench train --save-at` keeps them)")
    return str(snapshot)


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
