"""PerfMamba: Mamba-1 / Mamba-2 models, profiling and state pruning."""

from perfmamba.api import load_model
from perfmamba.config import Mamba1Config, Mamba2Config, get_preset, preset_names
from perfmamba.errors import PerfMambaError
from perfmamba.models.cache import InferenceCache
from perfmamba.models.lm import MambaLM

__version__ = "0.1.0"

__all__ = ["load_model", "Mamba1Config", "Mamba2Config", "get_preset", "preset_names", "MambaLM",
           "InferenceCache", "PerfMambaError", "__version__"]
