"""The ``se3pyg`` command line (installed as ``se3pyg.cli``)."""

from __future__ import annotations

from se3pyg.allocator import exec_keeping_freed_memory
from se3pyg.processes import stop_signals_noted


def main() -> None:
    """The ``se3pyg`` command: restarts under glibc's settings for reusing freed memory, then runs the app."""
    exec_keeping_freed_memory()  # before torch is imported: the restart costs an interpreter start only
    with stop_signals_noted():  # from the first moment: a stop while the app loads is acted on once it runs
        from se3pyg.cli.app import main as run_app

        run_app()
