"""Progress bars on stderr (rich), drawn only on a terminal so logs and ``--json`` output stay clean."""

from __future__ import annotations

import contextlib
import sys


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "", status: bool = False):
    """Yields ``advance(n=1, **fields)``; with ``status`` the bar shows ``fields['status']`` (e.g. loss and
    tokens/s) after the counts.  A no-op when stderr is not a terminal."""
    if not stderr_is_terminal():
        yield lambda n=1, **fields: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, **fields) -> None:
            bar.update(task, advance=n, **fields)

        yield advance
