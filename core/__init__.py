"""SceneLab core: datasets, backbones, models, cached training. Never imports streamlit."""

from __future__ import annotations

import os

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["errors"]
