"""User-facing errors.

Every problem a user can cause (bad preset name, mis-shaped tensor, missing file, GPU-only option on a
CPU) is raised as a :class:`PerfMambaError` whose message is one line naming the problem and the fix.
The CLI prints that line and exits non-zero instead of showing a traceback.
"""


class PerfMambaError(ValueError):
    """A problem with the user's input; ``str(err)`` is a one-line explanation with the fix."""
