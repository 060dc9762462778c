"""Whether the model hub can be reached: one short TCP check before anything tries to download.

Without a network the hub client retries for a long time before giving up; callers check first and
load from the local cache only (``HF_HUB_OFFLINE=1``) when the hub is out of reach.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, default huggingface.co) accepts a TCP connection."""
    parts = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = parts.hostname or "huggingface.co"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
