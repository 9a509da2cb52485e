"""Is the Hugging Face hub reachable? Asked once per process.

Offline, `transformers` and `datasets` retry for half a minute or more before failing; specbench
asks first (2 s) and then loads from the local cache only, so offline errors come at once.
"""

from __future__ import annotations

import functools
import os
import socket


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False
