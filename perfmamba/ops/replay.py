"""Whether the calls being made will be replayed from a CUDA graph.

A kernel that has a choice between fewer launches and less device time (the Mamba-1 scan's padded copies
of unaligned rows) should choose by what a call costs where it runs: launched one by one, every launch
costs host time; replayed from a graph, none does.  ``perfmamba.models.cuda_graph.capture`` runs its
warm-up and its capture inside ``for_replay()``, so that both take the same path (CUDA requires the
kernels to be compiled before the capture) and the captured graph holds the path that is fastest on the
device.  A graph captured some other way gets the choice for eager calls, which is also correct.
"""

from __future__ import annotations

import contextlib
import contextvars

_FOR_REPLAY = contextvars.ContextVar("perfmamba_for_replay", default=False)


@contextlib.contextmanager
def for_replay():
    """Calls inside are a CUDA graph's warm-up or capture."""
    token = _FOR_REPLAY.set(True)
    try:
        yield
    finally:
        _FOR_REPLAY.reset(token)


def launches_are_free() -> bool:
    """True inside ``for_replay()``."""
    return _FOR_REPLAY.get()
