"""Helpers shared by the tests in tests/eval (tiny models, quick training settings)."""

from perfmamba.eval.train import TrainConfig, model_config

TINY_DIMS = {
    "mamba1": dict(d_model=16, n_layer=2, d_state=4, expand=2),
    "mamba2": dict(d_model=16, n_layer=2, d_state=8, expand=2, headdim=8, chunk_size=16),
}


def tiny_config(family):
    return model_config(family, vocab_size=256, **TINY_DIMS[family])


def quick_train_config(**overrides):
    base = dict(steps=6, batch_size=4, seq_len=32, lr=1e-2, warmup=2, eval_every=3, eval_bytes=2000,
                save_every=3, seed=0)
    base.update(overrides)
    return TrainConfig(**base)
