"""Move trained drafters between machines through small file slots (the lent GPU returns <= 16 MiB files).

`pack OUTDIR CHUNK_MIB DIR...`: each drafter's weights rounded to float16 (halves the size; a drafter
only proposes, so rounding changes tau slightly and never the output), tarred with its config.json and
split into numbered chunks. `unpack DEST CHUNK...`: join, untar. Loading casts back to the drafter's
dtype (`Drafter.load` -> `load_state_dict`).
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save as save_bytes


def pack(outdir: str, chunk_mib: str, *dirs: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in map(Path, dirs):
            state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(d / "model.safetensors").items()}
            for name, data in (("model.safetensors", save_bytes(state)), ("config.json", (d / "config.json").read_bytes())):
                if name == "config.json":
                    cfg = json.loads(data)
                    cfg.setdefault("training", {})["transfer"] = "weights rounded to float16 for transfer"
                    data = json.dumps(cfg, indent=2).encode()
                info = tarfile.TarInfo(f"{d.name}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    blob, size = buf.getvalue(), int(float(chunk_mib) * 2**20)
    Path(outdir).mkdir(parents=True, exist_ok=True)
    for i in range(0, len(blob), size):
        (Path(outdir) / f"drafters.tar.{i // size:03d}").write_bytes(blob[i:i + size])
    print(f"packed {len(dirs)} drafters, {len(blob) / 2**20:.1f} MiB, {(len(blob) + size - 1) // size} chunks")


def unpack(dest: str, *chunks: str) -> None:
    blob = b"".join(Path(c).read_bytes() for c in sorted(chunks, key=lambda c: Path(c).name))
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    print(f"unpacked into {dest}: {sorted(p.name for p in Path(dest).iterdir())}")


if __name__ == "__main__":
    {"pack": pack, "unpack": unpack}[sys.argv[1]](*sys.argv[2:])
