"""Checkpoint save/load: bit-exact round trips in both layouts, the other ways weights are found on disk,
and a one-line PerfMambaError for each way a checkpoint can be broken."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import perfmamba
from perfmamba.config import Mamba1Config, Mamba2Config
from perfmamba.errors import PerfMambaError
from perfmamba.models.lm import MambaLM

VOCAB = 61
# the problems tests/conftest.py's damaged_checkpoint fixture knows how to make
CHECKPOINT_PROBLEMS = ("missing-tensor", "unexpected-tensor", "misshaped-tensor", "wrong-family", "truncated",
                       "no-weights", "no-config", "invalid-json")


def make_config(family, tied):
    if family == "mamba1":
        return Mamba1Config(d_model=32, n_layer=2, vocab_size=VOCAB, d_state=7, d_conv=3, bias=not tied,
                            tie_embeddings=tied)
    return Mamba2Config(d_model=32, n_layer=2, vocab_size=VOCAB, d_state=11, headdim=16, ngroups=2, chunk_size=8,
                        conv_bias=tied, tie_embeddings=tied)


def ids(length=13):
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(0))


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key
    assert (b.lm_head.weight is b.backbone.embedding.weight) == a.config.tie_embeddings
    with torch.no_grad():
        la, lb = a(ids()), b(ids())
    assert la.dtype == lb.dtype
    assert torch.equal(la, lb)


@pytest.mark.parametrize("fmt", ["hf", "mamba_ssm"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_round_trip_is_bit_exact(family, tied, fmt, tmp_path, randomise):
    model = randomise(MambaLM(make_config(family, tied)), seed=3).eval()
    model.save_pretrained(str(tmp_path), format=fmt)
    with open(tmp_path / "config.json") as f:
        on_disk = json.load(f)
    if fmt == "hf":
        assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
        assert on_disk["model_type"] == ("mamba" if family == "mamba1" else "mamba2")
        keys = load_file(str(tmp_path / "model.safetensors")).keys()
        assert "backbone.embeddings.weight" in keys
        assert ("lm_head.weight" in keys) == (not tied)  # transformers omits a tied head
    else:
        assert sorted(os.listdir(tmp_path)) == ["config.json", "pytorch_model.bin"]
        assert on_disk["ssm_cfg"]["layer"] == ("Mamba1" if family == "mamba1" else "Mamba2")
        keys = torch.load(str(tmp_path / "pytorch_model.bin"), weights_only=True).keys()
        assert "backbone.embedding.weight" in keys and "lm_head.weight" in keys
    loaded = perfmamba.load_model(str(tmp_path), device="cpu")
    if fmt == "hf":
        assert loaded.config == model.config
    else:  # mamba_ssm's config.json has no token ids; everything else survives
        token_ids = ("pad_token_id", "bos_token_id", "eos_token_id")
        assert loaded.config.replace(**{k: None for k in token_ids}) == model.config.replace(
            **{k: None for k in token_ids})
    assert_same_model(model, loaded)


def test_resaving_in_the_other_layout_removes_stale_weights(tmp_path, randomise):
    model = randomise(MambaLM(make_config("mamba1", False)), seed=4).eval()
    model.save_pretrained(str(tmp_path), format="hf")
    model.save_pretrained(str(tmp_path), format="mamba_ssm")
    assert sorted(os.listdir(tmp_path)) == ["config.json", "pytorch_model.bin"]
    model.save_pretrained(str(tmp_path), format="hf")
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    assert_same_model(model, perfmamba.load_model(str(tmp_path), device="cpu"))
    with pytest.raises(PerfMambaError) as err:
        model.save_pretrained(str(tmp_path), format="gguf")
    assert "gguf" in str(err.value)


@pytest.mark.parametrize("fmt", ["hf", "mamba_ssm"])
@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_bf16_round_trip_keeps_bf16(family, fmt, tmp_path, randomise):
    model = randomise(MambaLM(make_config(family, True)), seed=5).eval().to(torch.bfloat16)
    assert model.backbone.embedding.weight.dtype == torch.bfloat16
    model.save_pretrained(str(tmp_path), format=fmt)
    loaded = perfmamba.load_model(str(tmp_path), device="cpu")
    assert loaded.backbone.embedding.weight.dtype == torch.bfloat16
    assert loaded.backbone.layers[0].mixer.in_proj.weight.dtype == torch.bfloat16
    assert loaded.backbone.layers[0].mixer.A_log.dtype == torch.float32  # SSM scalars stay fp32
    assert_same_model(model, loaded)


def test_dtype_override_on_load(tmp_path, randomise):
    model = randomise(MambaLM(make_config("mamba2", False)), seed=6).eval()
    model.save_pretrained(str(tmp_path))
    loaded = perfmamba.load_model(str(tmp_path), device="cpu", dtype="bfloat16")
    mixer = loaded.backbone.layers[1].mixer
    assert loaded.lm_head.weight.dtype == torch.bfloat16 and mixer.out_proj.weight.dtype == torch.bfloat16
    assert mixer.A_log.dtype == mixer.D.dtype == mixer.dt_bias.dtype == torch.float32
    assert torch.equal(mixer.in_proj.weight, model.backbone.layers[1].mixer.in_proj.weight.to(torch.bfloat16))
    with pytest.raises(PerfMambaError) as err:
        perfmamba.load_model(str(tmp_path), device="cpu", dtype="float8")
    assert "float8" in str(err.value)


@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_sharded_hf_checkpoint_loads(family, tmp_path, randomise):
    model = randomise(MambaLM(make_config(family, False)), seed=7).eval()
    model.save_pretrained(str(tmp_path), format="hf")
    state = load_file(str(tmp_path / "model.safetensors"))
    os.remove(tmp_path / "model.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for shard, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(tmp_path / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in shard_keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    assert_same_model(model, perfmamba.load_model(str(tmp_path), device="cpu"))
    # a shard named in the index but absent is a one-line error naming it
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(PerfMambaError) as err:
        perfmamba.load_model(str(tmp_path), device="cpu")
    assert "model-00002-of-00002.safetensors" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_pytorch_model_bin_with_hf_names_loads(family, tmp_path, randomise):
    model = randomise(MambaLM(make_config(family, False)), seed=8).eval()
    model.save_pretrained(str(tmp_path), format="hf")
    state = load_file(str(tmp_path / "model.safetensors"))
    assert "backbone.embeddings.weight" in state
    os.remove(tmp_path / "model.safetensors")
    torch.save(state, str(tmp_path / "pytorch_model.bin"))
    assert_same_model(model, perfmamba.load_model(str(tmp_path), device="cpu"))


@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_bare_backbone_state_dict_loads(family, tmp_path, randomise):
    """A MambaModel (no LM head, no ``backbone.`` prefix) checkpoint with a tied config."""
    model = randomise(MambaLM(make_config(family, True)), seed=9).eval()
    model.save_pretrained(str(tmp_path), format="hf")
    state = load_file(str(tmp_path / "model.safetensors"))
    bare = {k[len("backbone."):]: v for k, v in state.items()}
    assert "embeddings.weight" in bare and not any(k.startswith("backbone.") for k in bare)
    save_file(bare, str(tmp_path / "model.safetensors"))
    assert_same_model(model, perfmamba.load_model(str(tmp_path), device="cpu"))


# ---------------------------------------------------------------------------------------------- errors
def one_line_error(excinfo, words):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    for word in words:
        assert word in msg, (word, msg)
    return msg


@pytest.mark.parametrize("problem", CHECKPOINT_PROBLEMS)
def test_broken_checkpoint_is_a_one_line_error(problem, tmp_path, damaged_checkpoint):
    words = damaged_checkpoint(tmp_path, problem)
    with pytest.raises(PerfMambaError) as err:
        perfmamba.load_model(str(tmp_path), device="cpu")
    one_line_error(err, words)


def test_truncated_pickle_is_a_one_line_error(tmp_path, randomise):
    randomise(MambaLM(make_config("mamba1", True)), seed=10).save_pretrained(str(tmp_path), format="mamba_ssm")
    path = tmp_path / "pytorch_model.bin"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(PerfMambaError) as err:
        perfmamba.load_model(str(tmp_path), device="cpu")
    one_line_error(err, ["pytorch_model.bin"])


def test_unknown_name_lists_presets():
    with pytest.raises(PerfMambaError) as err:
        perfmamba.load_model("nonexistent-name", device="cpu")
    msg = one_line_error(err, ["nonexistent-name"])
    for name in perfmamba.preset_names():
        assert name in msg


def test_hub_id_offline_says_to_pass_a_local_dir(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    monkeypatch.chdir(tmp_path)  # so the id cannot be a local directory
    with pytest.raises(PerfMambaError) as err:
        perfmamba.load_model("perfmamba-tests/no-such-model", device="cpu")
    one_line_error(err, ["perfmamba-tests/no-such-model", "local"])


def test_nonexistent_directory_path(tmp_path):
    with pytest.raises(PerfMambaError) as err:
        perfmamba.load_model(str(tmp_path / "missing" / "dir"), device="cpu")
    one_line_error(err, ["missing"])
