"""pick_config builds a shape's candidate list only the first time it sees the shape's key."""

import pytest

pytest.importorskip("triton")
from perfmamba.ops.triton import selective_scan as scan_mod  # noqa: E402


def test_candidates_built_only_for_a_new_key(monkeypatch):
    monkeypatch.setattr(scan_mod, "_TUNED", {})
    monkeypatch.setenv("PERFMAMBA_AUTOTUNE", "0")  # the first candidate, untimed
    built = []

    def candidates():
        built.append(1)
        return [("first",), ("second",)]

    launch = lambda cfg: pytest.fail("nothing is timed with PERFMAMBA_AUTOTUNE=0")  # noqa: E731
    assert scan_mod.pick_config("k", candidates, launch) == ("first",) and built == [1]
    scan_mod._TUNED["k"] = ("second",)  # a key already tuned: its choice, and no list built
    assert scan_mod.pick_config("k", candidates, launch) == ("second",) and built == [1]
    assert scan_mod.pick_config("other", [("a",), ("b",)], launch) == ("a",)  # a plain list still works
