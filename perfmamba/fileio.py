"""File I/O shared by every command.

Writes are atomic: every output goes to a temporary name beside its target and is renamed into place, so a
crash or Ctrl-C never leaves a half-written file (and an old file stays whole until replaced).  JSON reads
turn a missing or damaged file into one line that says what to do.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from perfmamba.errors import PerfMambaError


def read_json(path: str, *, missing: str, fix: str) -> Any:
    """The parsed file; ``missing`` is the whole message when it does not exist, ``fix`` ends the others."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise PerfMambaError(missing) from None
    except json.JSONDecodeError as e:
        raise PerfMambaError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None
    except OSError as e:
        raise PerfMambaError(f"cannot read {path} ({e.strerror or e}); {fix}") from None


def atomic_write(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path``; the temporary file never outlives a failure.

    ``suffix`` keeps an extension on the temporary name for writers that look at it (e.g. ``.json``).
    """
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    atomic_write(path, write)


def write_json_atomic(path: str, obj: Any) -> None:
    """Indented JSON (non-finite floats allowed, as Python's json writes them) ending in a newline."""
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def save_figure_atomic(fig, path: str, dpi: int = 110) -> None:
    """A matplotlib figure as PNG."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
