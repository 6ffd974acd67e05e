"""The sweep's flat rows and speed table: prefill and serving (batched decode) peak memory, before and after."""

from perfmamba.pruning.render import _speed_tables
from perfmamba.pruning.sweep import join_rows


def _speed(sizes, tokens_per_s, serving_peak):
    decode = {"batch": 64, "status": "ok", "tokens_per_s": tokens_per_s, "state_cache_bytes": 64 * 1024,
              "cuda_graph": True}
    if serving_peak is not None:
        decode["peak_bytes"] = serving_peak
    return {"kept_sizes": sizes, "dtype": "bfloat16",
            "prefill": [{"length": 1024, "status": "ok", "tokens_per_s": tokens_per_s, "peak_bytes": 1000,
                         "cuda_graph": True}],
            "decode": [decode]}


def _accuracy(ratio, sizes):
    return dict(method="delta", ratio=ratio, kept_total=sum(sizes), kept_fraction=sum(sizes) / 32, parameters=10,
                bits_per_byte=1.0, bpb_change_pct=0.0, kept_sizes=sizes)


def test_serving_peak_memory_in_rows_and_table():
    speeds = [_speed([16, 16], 1000.0, 4000), _speed([8, 8], 1300.0, 3000)]
    rows = join_rows([_accuracy(0.0, [16, 16]), _accuracy(0.5, [8, 8])], speeds, [16, 16])
    assert rows[0]["decode_peak_reduction_pct_B64"] == 0.0
    assert rows[1]["decode_peak_bytes_B64"] == 3000 and rows[1]["decode_peak_reduction_pct_B64"] == 25.0
    assert rows[1]["prefill_speedup_L1024"] == 1.3
    table = "\n".join(_speed_tables({"speed": speeds, "original_sizes": [16, 16]}))
    assert "serving peak mem B=64" in table and "(-25.0%)" in table


def test_no_serving_peak_column_without_measurements():
    # CPU runs (and results written before the field existed) have no decode peak: no column, no numbers
    speeds = [_speed([16, 16], 1000.0, None), _speed([8, 8], 1300.0, None)]
    rows = join_rows([_accuracy(0.0, [16, 16]), _accuracy(0.5, [8, 8])], speeds, [16, 16])
    assert rows[1]["decode_peak_bytes_B64"] is None and rows[1]["decode_peak_reduction_pct_B64"] is None
    assert "serving peak" not in "\n".join(_speed_tables({"speed": speeds, "original_sizes": [16, 16]}))


def test_removed_in_common_counts_the_channels_both_selections_drop():
    import torch

    from perfmamba.pruning.sweep import removed_shared
    sizes = [4, 6]
    a = [torch.tensor([[0, 1]]), torch.tensor([[0, 1, 2], [3, 4, 5]])]  # drops {2,3}; {3,4,5}, {0,1,2}
    b = [torch.tensor([[0, 2]]), torch.tensor([[0, 1, 2], [0, 1, 2]])]  # drops {1,3}; {3,4,5}, {3,4,5}
    assert removed_shared(a, b, sizes) == (1 + 3 + 0) / (2 + 3 + 3)
    assert removed_shared(a, a, sizes) == 1.0
    assert removed_shared([torch.tensor([[0, 1, 2, 3]])], [torch.tensor([[0, 1]])], [4]) is None  # a drops none
