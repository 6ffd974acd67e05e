"""The two small demo models shipped with the package (byte-level, trained on the built-in ``cpython-docs``
corpus): ``demo-mamba1`` (Mamba-1, d_state 16) and ``demo-mamba2`` (Mamba-2, d_state 64).

Each lives in ``perfmamba/demo_models/<name>/`` as a Hugging Face checkpoint (config.json,
model.safetensors) with ``training.json`` recording how it was trained.  ``load_model("demo-mamba1")``
and ``perfmamba eval demo-mamba1`` find them by name.  ``benchmarks/train_demo_models.py`` rebuilds them.
"""

from __future__ import annotations

import os

from perfmamba.errors import PerfMambaError

DEMO_MODELS = ("demo-mamba1", "demo-mamba2")
_HERE = os.path.dirname(os.path.abspath(__file__))


def demo_model_path(name: str) -> str:
    """Where the demo model ``name`` lives (whether or not it has been trained yet)."""
    if name not in DEMO_MODELS:
        raise PerfMambaError(f"unknown demo model {name!r}; the demo models are {', '.join(DEMO_MODELS)}")
    return os.path.join(_HERE, name)


def demo_model_dir(name: str) -> str:
    """The shipped checkpoint directory of a demo model; a one-line error when its weights are not there."""
    path = demo_model_path(name)
    if not (os.path.isfile(os.path.join(path, "config.json"))
            and os.path.isfile(os.path.join(path, "model.safetensors"))):
        raise PerfMambaError(f"demo model {name} is not shipped yet (no weights in {path}); train it with "
                             "benchmarks/train_demo_models.py, or pass a preset or checkpoint directory")
    return path
