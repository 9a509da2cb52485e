"""A released drafter folder as its authors published it: config, tensors, where it came from.

Folders hold `config.json` plus `model.safetensors`, sharded safetensors with an index, or
`pytorch_model.bin` (EAGLE's own releases). Tensors are read on demand from safetensors, so the unused
tensors some releases carry (FlexDraft's copies of the target's MLPs, §E.11-8) are never materialised.
`hub:ORG/NAME[@REVISION]` resolves through huggingface_hub's cache (`snapshot_download`), offline from the
local cache when the hub is unreachable, so a machine with a populated cache needs no network.

Every refusal here and in the converters is a `SpecbenchError`: one line, exit code 2 (DESIGN.md §6).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

from specbench.errors import SpecbenchError
from specbench.hub import hub_reachable

HUB_PREFIX = "hub:"
#: the files a drafter needs; repositories also carry READMEs, code and images
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin"]
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def hub_folder(spec: str) -> Path:
    """The local snapshot folder of `hub:ORG/NAME[@REVISION]`, downloaded when the hub is reachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError

    repo, _, revision = spec[len(HUB_PREFIX):].partition("@")
    offline = not hub_reachable()
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_PATTERNS,
                                      local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError, ValueError) as e:
        where = "is not in the local Hugging Face cache and the hub is unreachable" if offline else "cannot be fetched"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecbenchError(f"drafter {spec} {where}: {first}") from None


def file_sha256(path: Path) -> str:
    """Streamed sha256 of a weight file, remembered per (path, size, mtime): a run hashes its drafter
    when loading it and again for the manifest."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, _size: int, _mtime: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


class Checkpoint:
    """`config` (the parsed config.json), `keys()` and `tensor(name)` of one released folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.source = self._hub_id() or str(self.folder.resolve())
        path = self.folder / "config.json"
        try:
            self.config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise SpecbenchError(f"{self.folder} has no readable config.json") from None
        self._where: dict[str, Path] = {}  # tensor name -> safetensors file
        self._loaded: dict[str, torch.Tensor] = {}  # tensors of .bin files
        self.index: Path | None = None
        self.files = self._weight_files()
        if not self.files:
            raise SpecbenchError(f"{self.folder} has no model.safetensors or pytorch_model.bin")

    def _weight_files(self) -> list[Path]:
        """Safetensors when present (an index names the shards), else pickled `.bin` files."""
        from safetensors import safe_open

        for suffix, index in ((".safetensors", "model.safetensors.index.json"),
                              (".bin", "pytorch_model.bin.index.json")):
            if (self.folder / index).is_file():
                names = sorted(set(json.loads((self.folder / index).read_text())["weight_map"].values()))
                files, self.index = [self.folder / n for n in names], self.folder / index
            else:
                pattern = "*.safetensors" if suffix == ".safetensors" else "pytorch_model*.bin"  # not training_args.bin
                files = sorted(p for p in self.folder.glob(pattern) if p.is_file())
            if not files:
                continue
            for f in files:
                if suffix == ".safetensors":
                    with safe_open(f, "pt") as st:
                        self._where.update(dict.fromkeys(st.keys(), f))
                else:
                    self._loaded.update(torch.load(f, map_location="cpu", weights_only=True))
            return files
        return []

    def keys(self) -> set[str]:
        return set(self._where) | set(self._loaded)

    def tensor(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name in self._loaded:
            return self._loaded[name]
        with safe_open(self._where[name], "pt") as st:
            return st.get_tensor(name)

    def shape(self, name: str) -> list[int]:
        """A tensor's shape without reading it (safetensors headers)."""
        from safetensors import safe_open

        if name not in self.keys():
            raise self.refuse(f"tensor {name} is missing")
        if name in self._loaded:
            return list(self._loaded[name].shape)
        with safe_open(self._where[name], "pt") as st:
            return list(st.get_slice(name).get_shape())

    def _hub_id(self) -> str | None:
        """`hub:ORG/NAME` of a folder inside huggingface_hub's cache (`models--ORG--NAME/snapshots/<commit>`;
        the hub forbids `--` inside names, so the folder name is unambiguous)."""
        repo = self.folder.resolve().parent.parent.name
        if self.folder.resolve().parent.name == "snapshots" and repo.startswith("models--"):
            return HUB_PREFIX + repo[len("models--"):].replace("--", "/")
        return None

    @property
    def revision(self) -> str | None:
        """The commit of a hub snapshot, None for other folders."""
        return self.folder.resolve().name if self._hub_id() else None

    def provenance(self, layout: str) -> dict:
        """Where the weights came from: source id, revision, sha256 of config and weight files."""
        files = [self.folder / "config.json", *([self.index] if self.index else []), *self.files]
        return {"source": self.source, "revision": self.revision, "layout": layout,
                "files": {f.name: file_sha256(f) for f in files}}

    # -- config reading ------------------------------------------------------------------------------------
    def setting(self, name: str, default=None, *sections: str):
        """`name` from the first of `sections` (nested dicts of config.json) that has it, else top level."""
        for section in sections:
            value = (self.config.get(section) or {}).get(name)
            if value is not None:
                return value
        value = self.config.get(name)
        return default if value is None else value

    def require(self, name: str, *sections: str):
        value = self.setting(name, None, *sections)
        if value is None:
            raise self.refuse(f"config.json has no {name}")
        return value

    def refuse(self, what: str) -> SpecbenchError:
        return SpecbenchError(f"{self.source}: {what}")


# -- checks and assembly shared by the converters --------------------------------------------------------------

def default_rope_theta(ckpt: Checkpoint, default: float, *sections: str) -> float:
    """The RoPE base of a draft config; any RoPE scaling is refused (specbench's draft layers use the
    default RoPE, `specbench.layers.rotary`)."""
    scaling = ckpt.setting("rope_scaling", None, *sections) or {}
    params = ckpt.setting("rope_parameters", None, *sections) or {}
    kind = scaling.get("rope_type") or scaling.get("type") or params.get("rope_type") or "default"
    if kind != "default":
        raise ckpt.refuse(f"RoPE scaling {kind!r} is not implemented (draft layers use default RoPE)")
    return float(params.get("rope_theta") or ckpt.setting("rope_theta", default, *sections))


def refuse_flags(ckpt: Checkpoint, flags: dict[str, str], *sections: str) -> None:
    """Refuse a config that switches on a variant specbench does not implement (`flag -> what it is`)."""
    for flag, what in flags.items():
        if ckpt.setting(flag, False, *sections):
            raise ckpt.refuse(f"{flag}=true ({what}) is not implemented")


def expect(ckpt: Checkpoint, what: str, got, wanted, target) -> None:
    """One line when the checkpoint and the target disagree (hidden size, vocabulary, layer count...)."""
    if got != wanted:
        raise ckpt.refuse(f"{what} is {got}, but target {target.name} has {wanted}")


def check_embedding(ckpt: Checkpoint, key: str, target) -> None:
    """A shipped embedding must be the target's own (compared in the checkpoint's dtype): the drafter
    borrows the target's rows, so a different table would make it a different drafter."""
    shipped = ckpt.tensor(key)
    own = target.model.get_input_embeddings().weight.detach().to("cpu", shipped.dtype)
    if shipped.shape != own.shape or not torch.equal(shipped, own):
        raise ckpt.refuse(f"{key} {list(shipped.shape)} differs from the embedding of target {target.name}: "
                          "drafters that bring their own embedding are not implemented")


def assemble(cls, config, ckpt: Checkpoint, target, layout: str, rename: dict[str, str],
             ignored: set[str] = frozenset(), extra: dict | None = None):
    """The specbench drafter `cls(config)` holding the checkpoint's tensors, attached to `target` in its
    device and dtype, with the provenance in `training_info["published"]`.

    `rename` maps checkpoint names to the drafter's, `ignored` names tensors the method never reads and
    `extra` supplies drafter tensors the layout leaves implicit (a full-vocabulary EAGLE-3 map). Any
    other checkpoint tensor, a missing one or a shape mismatch is refused.
    """
    unknown = sorted(ckpt.keys() - set(rename) - set(ignored))
    if unknown:
        raise ckpt.refuse(f"unrecognised tensors for the {layout} layout: {', '.join(unknown[:4])}"
                          + (f" (+{len(unknown) - 4} more)" if len(unknown) > 4 else ""))
    drafter = cls(config)
    own = drafter.state_dict()
    homeless = sorted(theirs for theirs, mine in rename.items() if mine not in own)
    if homeless:
        raise ckpt.refuse(f"tensors {', '.join(homeless[:4])} have no counterpart in a drafter for target "
                          f"{target.name}")
    source = {mine: theirs for theirs, mine in rename.items()}
    missing = sorted(set(own) - set(source) - set(extra or {}))
    if missing:
        raise ckpt.refuse(f"{layout} layout: missing tensors for {', '.join(missing[:4])}")
    state, dtypes = dict(extra or {}), set()
    for mine, theirs in source.items():
        t = ckpt.tensor(theirs)
        if t.is_floating_point():
            dtypes.add(t.dtype)
        if t.is_floating_point() and t.dtype not in FLOAT_DTYPES:
            raise ckpt.refuse(f"{theirs} is {t.dtype}: published drafters load from float16, bfloat16 or float32")
        if t.is_floating_point() != own[mine].is_floating_point():
            raise ckpt.refuse(f"{theirs} is {t.dtype}, expected {own[mine].dtype}")
        if t.shape != own[mine].shape:
            raise ckpt.refuse(f"{theirs} has shape {list(t.shape)}, expected {list(own[mine].shape)} for target "
                              f"{target.name}")
        state[mine] = t
    drafter.load_state_dict(state)
    drafter.attach(target)
    drafter.to(target.device, target.dtype)
    dtype = max(dtypes, key=FLOAT_DTYPES.index) if dtypes else torch.float32
    drafter.training_info = {"published": {**ckpt.provenance(layout), "dtype": str(dtype).replace("torch.", ""),
                                           "ignored_tensors": sorted(ignored)}}
    return drafter.eval()
