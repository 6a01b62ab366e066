"""Hub access that fails in seconds, not minutes, when there is no network.

huggingface_hub retries unreachable hosts with back-off (~40 s per call). We probe the endpoint
once; when it is unreachable we switch the libraries to offline mode, so files already in the HF
cache still load and anything else fails at once with our one-line error.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def prepare_hub() -> bool:
    """Call before any hub load; returns whether the hub is reachable (offline mode set if not)."""
    if hub_reachable():
        return True
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    log.info("Hugging Face Hub unreachable: offline mode (only cached files load)")
    return False
