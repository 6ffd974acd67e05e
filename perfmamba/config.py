"""Model configurations: one dataclass per family, named presets, and config.json round trips.

Field names follow mamba_ssm (d_model, n_layer, d_state, ...), which is what the papers and kernels use.
Two on-disk dialects are read and written:

* Hugging Face ``transformers`` (``MambaConfig`` / ``Mamba2Config``: hidden_size, state_size, ...);
* mamba_ssm (``MambaConfig``: d_model, n_layer, ssm_cfg={...}, pad_vocab_size_multiple, ...).

``vocab_size`` here is always the number of embedding rows actually allocated (already padded), which is
what Hugging Face stores; mamba_ssm stores the unpadded size and pads when it builds the model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Union

from perfmamba.errors import PerfMambaError
from perfmamba.fileio import read_json

# Hugging Face config.json files carry many keys that describe no hyperparameter of the function
# (transformers_version, use_cache, initializer_range, use_associative_scan, ...), and the set changes
# between transformers releases; so unknown keys there are ignored, and the few values that would change
# the model in ways perfmamba cannot represent are checked one by one.


def _pad_vocab(vocab_size: int, multiple: int) -> int:
    return vocab_size if multiple <= 1 else multiple * math.ceil(vocab_size / multiple)


def _check_unknown(cls, kwargs: dict) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise PerfMambaError(
            f"unknown {cls.__name__} key(s) {unknown}; valid keys are: {', '.join(sorted(names))}")


@dataclass
class _BaseConfig:
    """Fields shared by both families (the residual stream, embeddings and head)."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise PerfMambaError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")
        self.d_inner = self.expand * self.d_model

    @property
    def family(self) -> str:  # "mamba1" | "mamba2"
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict):
        """Build from our own field names; an unknown key is a one-line error listing the valid ones."""
        d = dict(d)
        d.pop("family", None)
        for derived in cls._DERIVED:
            d.pop(derived, None)
        _check_unknown(cls, d)
        return cls(**d)

    def to_dict(self) -> dict:
        """Our field names, JSON-safe (an infinite dt limit is written as the string "inf")."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if "dt_limit" in d:
            d["dt_limit"] = [v if math.isfinite(v) else str(v) for v in d["dt_limit"]]
        if "A_init_range" in d:
            d["A_init_range"] = list(d["A_init_range"])
        d["family"] = self.family
        return d

    def replace(self, **changes):
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        _check_unknown(type(self), changes)
        d.update(changes)
        return type(self)(**d)


@dataclass
class Mamba1Config(_BaseConfig):
    """Mamba-1 (selective SSM, S6) language model."""

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50280
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: Union[int, str] = "auto"  # "auto" -> ceil(d_model / 16)
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    pad_token_id: Optional[int] = 0
    bos_token_id: Optional[int] = 0
    eos_token_id: Optional[int] = 0
    # Per-layer state sizes for pruned models (None: every layer uses d_state).
    d_state_per_layer: Optional[list] = None

    _DERIVED = ("d_inner",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        if not isinstance(self.dt_rank, int) or self.dt_rank < 1:
            raise PerfMambaError(f"Mamba1Config.dt_rank must be 'auto' or a positive integer, got {self.dt_rank!r}")
        _check_per_layer(self)

    @property
    def family(self) -> str:
        return "mamba1"

    def layer_d_state(self, layer_idx: int) -> int:
        return self.d_state if self.d_state_per_layer is None else int(self.d_state_per_layer[layer_idx])

    # ---- Hugging Face transformers (MambaConfig) ----
    _HF_FIELDS = (("dt_rank", "time_step_rank"), ("dt_scale", "time_step_scale"))
    _HF_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 32, "vocab_size": 50280, "state_size": 16,
                    "tie_word_embeddings": True, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}

    def to_hf_dict(self) -> dict:
        return _to_hf(self, "mamba", "MambaForCausalLM", intermediate_size=self.d_inner)

    @classmethod
    def from_hf_dict(cls, d: dict) -> "Mamba1Config":
        cfg = _from_hf(cls, d, "mamba")
        if "intermediate_size" in d and d["intermediate_size"] != cfg.d_inner:
            raise PerfMambaError(
                f"config.json intermediate_size {d['intermediate_size']} != expand*hidden_size {cfg.d_inner}; "
                "fix one of them")
        return cfg

    # ---- mamba_ssm (MambaConfig with ssm_cfg) ----
    def to_mamba_ssm_dict(self) -> dict:
        ssm_cfg = {"layer": "Mamba1", "d_state": self.d_state, "d_conv": self.d_conv, "expand": self.expand,
                   "dt_rank": self.dt_rank, "dt_min": self.dt_min, "dt_max": self.dt_max,
                   "dt_init_floor": self.dt_init_floor, "dt_scale": self.dt_scale,
                   "conv_bias": self.conv_bias, "bias": self.bias}
        return _mamba_ssm_top(self, ssm_cfg)

    @classmethod
    def from_mamba_ssm_dict(cls, d: dict) -> "Mamba1Config":
        top, ssm = _read_mamba_ssm_top(d, "Mamba1")
        known = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor", "dt_scale",
                 "conv_bias", "bias", "dt_init", "use_fast_path"}
        _check_unknown_hf(ssm, known, "mamba_ssm ssm_cfg")
        return cls(**top, d_state=ssm.get("d_state", 16), d_conv=ssm.get("d_conv", 4),
                   expand=ssm.get("expand", 2), dt_rank=ssm.get("dt_rank", "auto"),
                   dt_min=ssm.get("dt_min", 0.001), dt_max=ssm.get("dt_max", 0.1),
                   dt_init_floor=ssm.get("dt_init_floor", 1e-4), dt_scale=ssm.get("dt_scale", 1.0),
                   conv_bias=ssm.get("conv_bias", True), bias=ssm.get("bias", False))


@dataclass
class Mamba2Config(_BaseConfig):
    """Mamba-2 (SSD) language model."""

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50288
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    conv_bias: bool = True
    bias: bool = False
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    A_init_range: tuple = (1.0, 16.0)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple = (0.0, float("inf"))
    pad_token_id: Optional[int] = 0
    bos_token_id: Optional[int] = 0
    eos_token_id: Optional[int] = 0
    d_state_per_layer: Optional[list] = None

    _DERIVED = ("d_inner", "nheads", "conv_dim", "d_in_proj")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.A_init_range = tuple(self.A_init_range)
        self.dt_limit = tuple(_json_float(v) for v in self.dt_limit)
        if self.d_inner % self.headdim:
            raise PerfMambaError(
                f"Mamba2Config: d_inner = expand*d_model = {self.d_inner} is not a multiple of headdim "
                f"{self.headdim}; pick a headdim that divides it")
        self.nheads = self.d_inner // self.headdim
        if self.ngroups < 1 or self.nheads % self.ngroups:
            raise PerfMambaError(
                f"Mamba2Config: ngroups {self.ngroups} must divide the number of heads {self.nheads}")
        _check_per_layer(self)
        self.conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        self.d_in_proj = 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def family(self) -> str:
        return "mamba2"

    def layer_d_state(self, layer_idx: int) -> int:
        return self.d_state if self.d_state_per_layer is None else int(self.d_state_per_layer[layer_idx])

    # ---- Hugging Face transformers (Mamba2Config) ----
    _HF_FIELDS = (("headdim", "head_dim"), ("ngroups", "n_groups"), ("chunk_size", "chunk_size"),
                  ("dt_limit", "time_step_limit"))
    _HF_DEFAULTS = {"hidden_size": 4096, "num_hidden_layers": 64, "vocab_size": 32768, "state_size": 128,
                    "n_groups": 8, "tie_word_embeddings": False, "pad_token_id": 1, "bos_token_id": 0,
                    "eos_token_id": 2}

    def to_hf_dict(self) -> dict:
        d = _to_hf(self, "mamba2", "Mamba2ForCausalLM", num_heads=self.nheads, rms_norm=True)
        d["time_step_limit"] = list(self.dt_limit)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict) -> "Mamba2Config":
        if d.get("rms_norm", True) is False:
            raise PerfMambaError("Mamba2 config.json has rms_norm=false, which perfmamba does not support")
        cfg = _from_hf(cls, d, "mamba2")
        if "num_heads" in d and d["num_heads"] != cfg.nheads:
            raise PerfMambaError(
                f"config.json num_heads {d['num_heads']} != expand*hidden_size/head_dim = {cfg.nheads}; "
                "fix one of them")
        return cfg

    def to_mamba_ssm_dict(self) -> dict:
        ssm_cfg = {"layer": "Mamba2", "d_state": self.d_state, "d_conv": self.d_conv, "expand": self.expand,
                   "headdim": self.headdim, "ngroups": self.ngroups, "chunk_size": self.chunk_size,
                   "A_init_range": list(self.A_init_range), "dt_min": self.dt_min, "dt_max": self.dt_max,
                   "dt_init_floor": self.dt_init_floor, "dt_limit": list(self.dt_limit),
                   "conv_bias": self.conv_bias, "bias": self.bias}
        return _mamba_ssm_top(self, ssm_cfg)

    @classmethod
    def from_mamba_ssm_dict(cls, d: dict) -> "Mamba2Config":
        top, ssm = _read_mamba_ssm_top(d, "Mamba2")
        known = {"d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size", "A_init_range", "dt_min",
                 "dt_max", "dt_init_floor", "dt_limit", "conv_bias", "bias", "conv_init", "d_ssm", "D_has_hdim",
                 "rmsnorm", "norm_before_gate", "use_mem_eff_path"}
        _check_unknown_hf(ssm, known, "mamba_ssm ssm_cfg")
        unsupported = {"D_has_hdim": True, "rmsnorm": False, "norm_before_gate": True}
        for key, bad in unsupported.items():
            if ssm.get(key, not bad) == bad:
                raise PerfMambaError(f"mamba_ssm ssm_cfg {key}={bad} is not supported by perfmamba")
        if ssm.get("d_ssm") not in (None, top["d_model"] * ssm.get("expand", 2)):
            raise PerfMambaError("mamba_ssm ssm_cfg d_ssm != d_inner (partial SSM) is not supported by perfmamba")
        return cls(**top, d_state=ssm.get("d_state", 128), d_conv=ssm.get("d_conv", 4),
                   expand=ssm.get("expand", 2), headdim=ssm.get("headdim", 64), ngroups=ssm.get("ngroups", 1),
                   chunk_size=ssm.get("chunk_size", 256), A_init_range=tuple(ssm.get("A_init_range", (1, 16))),
                   dt_min=ssm.get("dt_min", 0.001), dt_max=ssm.get("dt_max", 0.1),
                   dt_init_floor=ssm.get("dt_init_floor", 1e-4),
                   dt_limit=tuple(ssm.get("dt_limit", (0.0, float("inf")))),
                   conv_bias=ssm.get("conv_bias", True), bias=ssm.get("bias", False))


AnyConfig = Union[Mamba1Config, Mamba2Config]


# Fields both families share with transformers' configs: (our name, Hugging Face name).
_HF_COMMON_FIELDS = (
    ("vocab_size", "vocab_size"), ("d_model", "hidden_size"), ("d_state", "state_size"),
    ("n_layer", "num_hidden_layers"), ("norm_eps", "layer_norm_epsilon"), ("expand", "expand"),
    ("d_conv", "conv_kernel"), ("bias", "use_bias"), ("conv_bias", "use_conv_bias"),
    ("residual_in_fp32", "residual_in_fp32"), ("dt_min", "time_step_min"), ("dt_max", "time_step_max"),
    ("dt_init_floor", "time_step_floor"), ("tie_embeddings", "tie_word_embeddings"),
    ("pad_token_id", "pad_token_id"), ("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
    ("d_state_per_layer", "perfmamba_d_state_per_layer"),
)


def _to_hf(cfg, model_type: str, architecture: str, **derived) -> dict:
    d = {"model_type": model_type, "architectures": [architecture], "hidden_act": "silu", **derived}
    for ours, hf in _HF_COMMON_FIELDS + cfg._HF_FIELDS:
        d[hf] = getattr(cfg, ours)
    if cfg.d_state_per_layer is None:
        del d["perfmamba_d_state_per_layer"]
    return d


def _from_hf(cls, d: dict, model_type: str):
    """Keys missing from the file take transformers' class defaults (which differ from our presets')."""
    _expect_model_type(d, model_type)
    kwargs = {}
    for ours, hf in _HF_COMMON_FIELDS + cls._HF_FIELDS:
        if hf in d or hf in cls._HF_DEFAULTS:
            kwargs[ours] = d.get(hf, cls._HF_DEFAULTS.get(hf))
    return cls(**kwargs)


def _json_float(v) -> float:
    """A float from config.json: a number, "Infinity", or transformers 5's {"__float__": "Infinity"}."""
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    try:
        return float(v)
    except (TypeError, ValueError):
        raise PerfMambaError(f"config.json holds {v!r} where a number was expected; fix the file") from None


def _check_per_layer(cfg) -> None:
    if cfg.d_state_per_layer is None:
        return
    sizes = list(cfg.d_state_per_layer)
    if len(sizes) != cfg.n_layer or any(int(n) < 1 for n in sizes):
        raise PerfMambaError(
            f"{type(cfg).__name__}.d_state_per_layer must list n_layer={cfg.n_layer} positive sizes, got {sizes}")
    cfg.d_state_per_layer = [int(n) for n in sizes]
    cfg.d_state = max(cfg.d_state_per_layer)


def _expect_model_type(d: dict, want: str) -> None:
    got = d.get("model_type", want)
    if got != want:
        other = "Mamba2Config" if want == "mamba" else "Mamba1Config"
        raise PerfMambaError(f"config.json has model_type={got!r}, not {want!r}; use {other} / load_model instead")


def _check_unknown_hf(d: dict, known: set, what: str) -> None:
    unknown = sorted(k for k in d if k not in known and k != "layer")
    if unknown:
        raise PerfMambaError(f"unknown {what} key(s) {unknown}; perfmamba cannot represent them")


def _mamba_ssm_top(cfg: AnyConfig, ssm_cfg: dict) -> dict:
    # mamba_ssm pads the vocabulary itself: store our (already padded) size with multiple 1 so it is unchanged.
    d = {"d_model": cfg.d_model, "d_intermediate": 0, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size,
         "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
         "residual_in_fp32": cfg.residual_in_fp32, "fused_add_norm": True, "pad_vocab_size_multiple": 1,
         "tie_embeddings": cfg.tie_embeddings}
    if cfg.norm_eps != 1e-5:
        d["norm_epsilon"] = cfg.norm_eps
    if cfg.d_state_per_layer is not None:
        d["perfmamba_d_state_per_layer"] = list(cfg.d_state_per_layer)
    return d


def _read_mamba_ssm_top(d: dict, want_layer: str) -> tuple[dict, dict]:
    known = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
             "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings",
             "norm_epsilon", "perfmamba_d_state_per_layer"}
    _check_unknown_hf(d, known, "mamba_ssm config")
    ssm = dict(d.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    if layer != want_layer:
        raise PerfMambaError(f"mamba_ssm config has ssm_cfg.layer={layer!r}, expected {want_layer!r}")
    if d.get("d_intermediate", 0) or d.get("attn_layer_idx"):
        raise PerfMambaError("mamba_ssm config has MLP (d_intermediate) or attention layers; hybrid models "
                             "are not supported by perfmamba")
    if d.get("rms_norm", True) is False:
        raise PerfMambaError("mamba_ssm config has rms_norm=false (LayerNorm); perfmamba supports RMSNorm only")
    top = {"d_model": d["d_model"], "n_layer": d["n_layer"],
           "vocab_size": _pad_vocab(d["vocab_size"], d.get("pad_vocab_size_multiple", 8)),
           "residual_in_fp32": d.get("residual_in_fp32", True), "tie_embeddings": d.get("tie_embeddings", True),
           "norm_eps": d.get("norm_epsilon", 1e-5), "d_state_per_layer": d.get("perfmamba_d_state_per_layer")}
    return top, ssm


def config_from_json_dict(d: dict) -> AnyConfig:
    """Detect the dialect (Hugging Face or mamba_ssm) and family of a config.json dict and parse it."""
    model_type = d.get("model_type")
    if model_type == "mamba":
        return Mamba1Config.from_hf_dict(d)
    if model_type == "mamba2":
        return Mamba2Config.from_hf_dict(d)
    if model_type is not None:
        raise PerfMambaError(f"config.json has model_type={model_type!r}; perfmamba reads 'mamba' and 'mamba2' only")
    if "d_model" in d and "n_layer" in d:
        layer = (d.get("ssm_cfg") or {}).get("layer", "Mamba1")
        if layer == "Mamba2":
            return Mamba2Config.from_mamba_ssm_dict(d)
        if layer == "Mamba1":
            return Mamba1Config.from_mamba_ssm_dict(d)
        raise PerfMambaError(f"mamba_ssm config has unsupported ssm_cfg.layer={layer!r}")
    raise PerfMambaError("config.json is neither a Hugging Face Mamba/Mamba2 config (model_type) nor a mamba_ssm "
                         "config (d_model, n_layer); check the file")


def read_config_json(path: str) -> AnyConfig:
    d = read_json(path, missing=f"no config.json at {path}; a checkpoint directory needs one",
                  fix="fix or re-download it")
    return config_from_json_dict(d)


# ---------------------------------------------------------------------------------------------- presets
_MAMBA1_SIZES = {"mamba-130m": (768, 24), "mamba-370m": (1024, 48), "mamba-790m": (1536, 48),
                 "mamba-1.4b": (2048, 48), "mamba-2.8b": (2560, 64)}
_MAMBA2_SIZES = {"mamba2-130m": (768, 24), "mamba2-370m": (1024, 48), "mamba2-780m": (1536, 48),
                 "mamba2-1.3b": (2048, 48), "mamba2-2.7b": (2560, 64)}
# The GPT-NeoX tokenizer's 50277 entries, padded as the published checkpoints do (8 for Mamba-1, 16 for Mamba-2).
_GPT_NEOX_VOCAB = 50277


def preset_names() -> list[str]:
    return list(_MAMBA1_SIZES) + list(_MAMBA2_SIZES)


def get_preset(name: str, **overrides) -> AnyConfig:
    """A published size by name, e.g. ``get_preset("mamba2-370m")``; keyword overrides replace fields."""
    if name in _MAMBA1_SIZES:
        d_model, n_layer = _MAMBA1_SIZES[name]
        base = dict(d_model=d_model, n_layer=n_layer, vocab_size=_pad_vocab(_GPT_NEOX_VOCAB, 8))
        cls = Mamba1Config
    elif name in _MAMBA2_SIZES:
        d_model, n_layer = _MAMBA2_SIZES[name]
        base = dict(d_model=d_model, n_layer=n_layer, vocab_size=_pad_vocab(_GPT_NEOX_VOCAB, 16))
        cls = Mamba2Config
    else:
        raise PerfMambaError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}")
    _check_unknown(cls, overrides)
    base.update(overrides)
    return cls(**base)
