"""Provenance recorded in every manifest: code version, packages, hardware, threads (DESIGN.md §6)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

_PACKAGES = ("specbench", "torch", "transformers", "tokenizers", "accelerate", "gguf", "numpy", "safetensors")


def git_info() -> dict:
    root = Path(__file__).resolve().parent.parent
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    try:
        sha = git("rev-parse", "HEAD")
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"sha": sha.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None}


def package_versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1/5/15-minute load: timings on a shared CPU are only comparable at similar load."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
            "hostname": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "load_average": load_average()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def collect(device: torch.device) -> dict:
    return {"git": git_info(), "versions": package_versions(), "hardware": device_info(device),
            "argv": sys.argv, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
