"""Keep every model library away from the network.

Hugging Face libraries read these flags when they are first imported, so this module is
imported by ``models`` and ``emb`` before anything that could import them. Setting them is
the one place Haven writes the environment at import time: Haven never reaches a model hub.
"""

from __future__ import annotations

import os

OFFLINE_FLAGS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def force_offline() -> None:
    # Assigned, not setdefault: an inherited HF_HUB_OFFLINE=0 must not re-enable the hub.
    os.environ.update(OFFLINE_FLAGS)


force_offline()
