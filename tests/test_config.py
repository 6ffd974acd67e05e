"""Presets, derived dimensions and config.json round trips (ours <-> Hugging Face <-> mamba_ssm)."""

import json
import math

import pytest

from perfmamba.config import (Mamba1Config, Mamba2Config, config_from_json_dict, get_preset, preset_names,
                              read_config_json)
from perfmamba.errors import PerfMambaError

MAMBA1_PRESETS = {"mamba-130m": (768, 24), "mamba-370m": (1024, 48), "mamba-790m": (1536, 48),
                  "mamba-1.4b": (2048, 48), "mamba-2.8b": (2560, 64)}
MAMBA2_PRESETS = {"mamba2-130m": (768, 24), "mamba2-370m": (1024, 48), "mamba2-780m": (1536, 48),
                  "mamba2-1.3b": (2048, 48), "mamba2-2.7b": (2560, 64)}


def _one_line(err) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------- presets
def test_preset_names_are_exactly_the_published_sizes():
    assert sorted(preset_names()) == sorted(list(MAMBA1_PRESETS) + list(MAMBA2_PRESETS))


@pytest.mark.parametrize("name", list(MAMBA1_PRESETS))
def test_mamba1_presets(name):
    d_model, n_layer = MAMBA1_PRESETS[name]
    cfg = get_preset(name)
    assert isinstance(cfg, Mamba1Config) and cfg.family == "mamba1"
    assert (cfg.d_model, cfg.n_layer) == (d_model, n_layer)
    assert cfg.d_state == 16 and cfg.d_conv == 4 and cfg.expand == 2
    assert cfg.vocab_size == 50280
    assert cfg.dt_rank == math.ceil(d_model / 16)
    assert cfg.d_inner == 2 * d_model
    assert cfg.tie_embeddings and cfg.conv_bias and not cfg.bias


@pytest.mark.parametrize("name", list(MAMBA2_PRESETS))
def test_mamba2_presets(name):
    d_model, n_layer = MAMBA2_PRESETS[name]
    cfg = get_preset(name)
    assert isinstance(cfg, Mamba2Config) and cfg.family == "mamba2"
    assert (cfg.d_model, cfg.n_layer) == (d_model, n_layer)
    assert cfg.d_state == 128 and cfg.headdim == 64 and cfg.ngroups == 1 and cfg.chunk_size == 256
    assert cfg.d_conv == 4 and cfg.expand == 2
    assert cfg.vocab_size == 50288
    d_inner = 2 * d_model
    assert cfg.d_inner == d_inner
    assert cfg.nheads == d_inner // 64
    assert cfg.conv_dim == d_inner + 2 * 1 * 128
    assert cfg.d_in_proj == 2 * d_inner + 2 * 128 + cfg.nheads


def test_dt_rank_auto_rounds_up():
    assert Mamba1Config(d_model=17, n_layer=1, vocab_size=8).dt_rank == 2
    assert Mamba1Config(d_model=32, n_layer=1, vocab_size=8).dt_rank == 2
    assert Mamba1Config(d_model=33, n_layer=1, vocab_size=8).dt_rank == 3
    assert Mamba1Config(d_model=32, n_layer=1, vocab_size=8, dt_rank=5).dt_rank == 5


def test_mamba2_derived_dims_with_groups():
    cfg = Mamba2Config(d_model=64, n_layer=2, vocab_size=100, d_state=11, headdim=16, ngroups=2, expand=2)
    assert cfg.d_inner == 128 and cfg.nheads == 8
    assert cfg.conv_dim == 128 + 2 * 2 * 11
    assert cfg.d_in_proj == 2 * 128 + 2 * 2 * 11 + 8


def test_preset_overrides():
    cfg = get_preset("mamba-130m", n_layer=2, d_state=8)
    assert (cfg.d_model, cfg.n_layer, cfg.d_state) == (768, 2, 8)
    with pytest.raises(PerfMambaError) as err:
        get_preset("mamba-130m", headdim=64)
    assert "headdim" in _one_line(err)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(PerfMambaError) as err:
        get_preset("mamba-7b")
    msg = _one_line(err)
    assert "mamba-7b" in msg
    for name in preset_names():
        assert name in msg


@pytest.mark.parametrize("cls", [Mamba1Config, Mamba2Config])
def test_from_dict_unknown_key_is_named(cls):
    with pytest.raises(PerfMambaError) as err:
        cls.from_dict({"d_model": 64, "n_layer": 2, "hidden_sizee": 3})
    msg = _one_line(err)
    assert "hidden_sizee" in msg


@pytest.mark.parametrize("kwargs", [dict(d_model=0), dict(n_layer=-1), dict(d_state=1.5), dict(vocab_size=0)])
def test_invalid_sizes(kwargs):
    with pytest.raises(PerfMambaError) as err:
        Mamba1Config(**kwargs)
    assert next(iter(kwargs)) in _one_line(err)


def test_mamba2_headdim_and_groups_must_divide():
    with pytest.raises(PerfMambaError) as err:
        Mamba2Config(d_model=48, n_layer=1, vocab_size=8, headdim=64)
    assert "headdim" in _one_line(err)
    with pytest.raises(PerfMambaError) as err:
        Mamba2Config(d_model=64, n_layer=1, vocab_size=8, headdim=16, ngroups=3)
    assert "ngroups" in _one_line(err)


def test_d_state_per_layer_validation():
    cfg = Mamba1Config(d_model=32, n_layer=2, vocab_size=8, d_state_per_layer=[5, 9])
    assert cfg.d_state == 9 and [cfg.layer_d_state(i) for i in range(2)] == [5, 9]
    with pytest.raises(PerfMambaError) as err:
        Mamba1Config(d_model=32, n_layer=3, vocab_size=8, d_state_per_layer=[5, 9])
    assert "d_state_per_layer" in _one_line(err)


# ------------------------------------------------------------------------------------------ round trips
def _mamba1_configs():
    return [
        Mamba1Config(d_model=64, n_layer=3, vocab_size=1000),
        Mamba1Config(d_model=48, n_layer=2, vocab_size=123, d_state=1, d_conv=3, conv_bias=False, bias=True,
                     tie_embeddings=False, dt_rank=7, norm_eps=1e-6, residual_in_fp32=False, dt_min=0.002,
                     dt_max=0.2, dt_init_floor=1e-3, dt_scale=0.5, expand=3),
        Mamba1Config(d_model=32, n_layer=2, vocab_size=64, d_state=11, d_conv=2, norm_eps=3e-4),
        Mamba1Config(d_model=32, n_layer=2, vocab_size=64, d_state_per_layer=[5, 9]),
    ]


def _mamba2_configs():
    return [
        Mamba2Config(d_model=64, n_layer=3, vocab_size=1000, headdim=16),
        Mamba2Config(d_model=64, n_layer=2, vocab_size=123, d_state=11, d_conv=3, conv_bias=False, bias=True,
                     tie_embeddings=False, headdim=32, ngroups=2, chunk_size=16, norm_eps=1e-6,
                     dt_limit=(0.01, 0.5), residual_in_fp32=False, dt_min=0.002, dt_max=0.2, dt_init_floor=1e-3,
                     expand=1),
        Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=1, headdim=8, ngroups=4, chunk_size=8,
                     norm_eps=3e-4),
        Mamba2Config(d_model=32, n_layer=2, vocab_size=64, headdim=16, d_state_per_layer=[5, 9]),
    ]


def _mamba_ssm_comparable(cfg):
    """mamba_ssm's config.json has no token ids: compare everything else."""
    d = cfg.to_dict()
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
        d.pop(k)
    return d


@pytest.mark.parametrize("cfg", _mamba1_configs() + _mamba2_configs(), ids=lambda c: c.family)
def test_own_dict_round_trip(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))  # through JSON: an infinite dt limit is a string there
    assert type(cfg).from_dict(d) == cfg


@pytest.mark.parametrize("cfg", _mamba1_configs() + _mamba2_configs(), ids=lambda c: c.family)
def test_hf_dict_round_trip(cfg):
    d = json.loads(json.dumps(cfg.to_hf_dict()))
    back = type(cfg).from_hf_dict(d)
    assert back == cfg
    assert config_from_json_dict(d) == cfg


@pytest.mark.parametrize("cfg", _mamba1_configs() + _mamba2_configs(), ids=lambda c: c.family)
def test_mamba_ssm_dict_round_trip(cfg):
    d = json.loads(json.dumps(cfg.to_mamba_ssm_dict()))
    assert "model_type" not in d
    back = type(cfg).from_mamba_ssm_dict(d)
    assert _mamba_ssm_comparable(back) == _mamba_ssm_comparable(cfg)
    assert _mamba_ssm_comparable(config_from_json_dict(d)) == _mamba_ssm_comparable(cfg)


def test_non_default_values_survive_hf_and_mamba_ssm():
    cfg = _mamba2_configs()[1]
    for back in (Mamba2Config.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict()))),
                 Mamba2Config.from_mamba_ssm_dict(json.loads(json.dumps(cfg.to_mamba_ssm_dict())))):
        assert back.d_conv == 3 and back.conv_bias is False and back.bias is True
        assert back.tie_embeddings is False and back.ngroups == 2 and back.d_state == 11
        assert back.dt_limit == (0.01, 0.5) and back.norm_eps == 1e-6 and back.chunk_size == 16
    cfg1 = _mamba1_configs()[1]
    for back in (Mamba1Config.from_hf_dict(json.loads(json.dumps(cfg1.to_hf_dict()))),
                 Mamba1Config.from_mamba_ssm_dict(json.loads(json.dumps(cfg1.to_mamba_ssm_dict())))):
        assert back.d_conv == 3 and back.conv_bias is False and back.bias is True
        assert back.tie_embeddings is False and back.d_state == 1 and back.dt_rank == 7
        assert back.norm_eps == 1e-6 and back.expand == 3


def test_mamba_ssm_dict_pads_vocab():
    d = Mamba1Config(d_model=32, n_layer=1, vocab_size=50277).to_mamba_ssm_dict()
    d["pad_vocab_size_multiple"] = 8
    assert Mamba1Config.from_mamba_ssm_dict(d).vocab_size == 50280


def test_infinite_dt_limit_is_json_safe_and_parses_from_transformers_dialect():
    cfg = Mamba2Config(d_model=32, n_layer=1, vocab_size=8, headdim=16)
    text = json.dumps(cfg.to_dict(), allow_nan=False)  # must not need NaN/Infinity literals
    assert Mamba2Config.from_dict(json.loads(text)).dt_limit == (0.0, math.inf)
    hf = cfg.to_hf_dict()
    hf["time_step_limit"] = [0.0, {"__float__": "Infinity"}]  # how transformers 5 writes it
    assert Mamba2Config.from_hf_dict(hf).dt_limit == (0.0, math.inf)


# ------------------------------------------------------------------------------------------ wrong input
def test_wrong_family_hf_dict():
    d = Mamba2Config(d_model=32, n_layer=1, vocab_size=8, headdim=16).to_hf_dict()
    with pytest.raises(PerfMambaError) as err:
        Mamba1Config.from_hf_dict(d)
    assert "mamba2" in _one_line(err)
    d = Mamba1Config(d_model=32, n_layer=1, vocab_size=8).to_hf_dict()
    with pytest.raises(PerfMambaError) as err:
        Mamba2Config.from_hf_dict(d)
    assert "mamba" in _one_line(err)


def test_wrong_family_mamba_ssm_dict():
    d = Mamba2Config(d_model=32, n_layer=1, vocab_size=8, headdim=16).to_mamba_ssm_dict()
    with pytest.raises(PerfMambaError) as err:
        Mamba1Config.from_mamba_ssm_dict(d)
    assert "Mamba2" in _one_line(err)


def test_inconsistent_hf_dims_are_errors():
    d = Mamba1Config(d_model=32, n_layer=1, vocab_size=8).to_hf_dict()
    d["intermediate_size"] = 100
    with pytest.raises(PerfMambaError) as err:
        Mamba1Config.from_hf_dict(d)
    assert "intermediate_size" in _one_line(err)
    d = Mamba2Config(d_model=32, n_layer=1, vocab_size=8, headdim=16).to_hf_dict()
    d["num_heads"] = 7
    with pytest.raises(PerfMambaError) as err:
        Mamba2Config.from_hf_dict(d)
    assert "num_heads" in _one_line(err)


def test_unknown_model_type_and_unrecognised_json():
    with pytest.raises(PerfMambaError) as err:
        config_from_json_dict({"model_type": "llama"})
    assert "llama" in _one_line(err)
    with pytest.raises(PerfMambaError) as err:
        config_from_json_dict({"hello": 1})
    _one_line(err)


def test_read_config_json_errors(tmp_path):
    with pytest.raises(PerfMambaError) as err:
        read_config_json(str(tmp_path / "config.json"))
    assert "config.json" in _one_line(err)
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "mamba",\n "hidden_size": }')
    with pytest.raises(PerfMambaError) as err:
        read_config_json(str(bad))
    assert "JSON" in _one_line(err)


# ------------------------------------------------------------------------------------------ transformers
@pytest.mark.parametrize("cfg", _mamba1_configs()[:3], ids=["default", "nondefault", "odd"])
def test_transformers_mamba_config_accepts_ours(cfg):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.MambaConfig(**cfg.to_hf_dict())
    assert theirs.hidden_size == cfg.d_model and theirs.state_size == cfg.d_state
    assert theirs.intermediate_size == cfg.d_inner and theirs.time_step_rank == cfg.dt_rank
    assert theirs.conv_kernel == cfg.d_conv and theirs.use_bias == cfg.bias
    assert theirs.use_conv_bias == cfg.conv_bias and theirs.tie_word_embeddings == cfg.tie_embeddings
    back = Mamba1Config.from_hf_dict(json.loads(json.dumps(theirs.to_dict())))
    assert back == cfg


@pytest.mark.parametrize("cfg", _mamba2_configs()[:3], ids=["default", "nondefault", "odd"])
def test_transformers_mamba2_config_accepts_ours(cfg):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.Mamba2Config(**cfg.to_hf_dict())
    assert theirs.hidden_size == cfg.d_model and theirs.state_size == cfg.d_state
    assert theirs.num_heads == cfg.nheads and theirs.head_dim == cfg.headdim and theirs.n_groups == cfg.ngroups
    assert theirs.conv_kernel == cfg.d_conv and theirs.chunk_size == cfg.chunk_size
    assert theirs.tie_word_embeddings == cfg.tie_embeddings
    back = Mamba2Config.from_hf_dict(json.loads(json.dumps(theirs.to_dict())))
    assert back == cfg
