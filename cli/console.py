"""Console output shared by the commands: rich on a terminal, plain lines elsewhere."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from se3pyg.io import first_line
from se3pyg.processes import raise_if_stopped

# Off a terminal (logs, pipes) lines are never wrapped (paths and URLs stay whole), and tables get 200 columns
# or $COLUMNS when set (tables are printed with soft_wrap=False to fit them).
_TERMINAL = sys.stdout.isatty()
console = Console(soft_wrap=not _TERMINAL, width=None if _TERMINAL or "COLUMNS" in os.environ else 200)
err_console = Console(stderr=True)


def rate(molecules: float, seconds: float) -> str:
    """Molecules a second as the eye reads them: ``12.3 mol/ms`` for a GPU's rates, ``45.6 mol/s`` below 1 mol/ms
    (a CPU's small work, which mol/ms would show as 0.00)."""
    per_s = molecules / seconds if seconds > 0 else float("inf")
    return f"{per_s / 1000:.1f} mol/ms" if per_s >= 1000 else f"{per_s:.1f} mol/s"


def duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3 h 05``: a time as the eye reads it, in a width that stays small."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d}"


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the exit to raise."""
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """What se3pyg refuses (bad options, data, checkpoints, stores) or stops for ends as one line and an exit code;
    a stop signal noted while the work ran ends it so too, even when the work got to its end."""
    try:
        yield
        raise_if_stopped()
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM (se3pyg.processes.Interrupted), the cleanup done
        signum = getattr(exc, "signum", signal.SIGINT)
        raise fail(f"interrupted by {signal.Signals(signum).name}", 128 + signum) from None
    except OSError as exc:  # a full disk, an unreadable file: named by the system's message
        raise fail(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc), 1) from None
    except Exception as exc:
        code = _refusal_code(exc)
        if code is not None:
            raise fail(str(exc), code) from None
        cause = system_failure(exc)
        if cause is None:
            raise
        raise fail(cause, 1) from None


#: se3pyg's exceptions that end a command as one line: (module, class); ``ValueError`` too (bad options).
REFUSALS = (
    ("se3pyg.engine.train", "TrainingError"),
    ("se3pyg.data.errors", "DataError"),
    ("se3pyg.engine.tracking", "TrackingError"),
    ("se3pyg.engine.distributed", "RankError"),
)


def _refusal_code(exc: Exception) -> int | None:
    """The exit status of a refusal (a ``TrainingError``'s own code, else 2), ``None`` for other exceptions.

    The classes are looked up among the modules already imported, not imported here: an exception of a module never
    imported cannot have been raised, and ``se3pyg --help`` or ``se3pyg runs`` start without torch and PyG.
    """
    if isinstance(exc, ValueError):
        return 2
    for module, name in REFUSALS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return exc.code if name == "TrainingError" else 2
    return None


#: Messages of failures that come from the machine, not from se3pyg or the user's input, and what they mean.
_SYSTEM_CAUSES = (
    (("No space left on device", "unexpected pos", "file write failed"), "the disk is full (a write failed)"),
    (("can't allocate memory", "out of memory", "Cannot allocate memory"), "out of memory"),
    (("Too many open files",), "too many open files (raise ulimit -n)"),
)


def system_failure(exc: BaseException) -> str | None:
    """The one line for a failure of the machine rather than of se3pyg: a full disk (torch reports a failed
    ``torch.save`` as ``unexpected pos``), memory that cannot be allocated, too many open files, a library that
    cannot be loaded (e.g. under ``ulimit -v``); ``None`` for anything else, which stays a traceback (a bug)."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, ImportError):
        return f"a library could not be loaded ({first_line(exc)[:200]})"
    if isinstance(exc, RuntimeError):
        text = str(exc)
        for needles, cause in _SYSTEM_CAUSES:
            if any(needle in text for needle in needles):
                return f"{cause} ({first_line(exc)[:200]})"
    return None


#: Off a terminal, a stage's progress is printed when it starts and then at most this often (seconds).
PLAIN_PROGRESS_EVERY_S = 30.0


def _rate_and_loss(elapsed: float | None, molecules: int | None, loss: float | None) -> str:
    """``1040 mol/s  loss 0.2345`` of what a stage reports (empty parts left out)."""
    parts = [f"{molecules / elapsed:.0f} mol/s"] if molecules and elapsed else []
    return "  ".join(parts + ([f"loss {loss:.4f}"] if loss is not None else []))


@contextmanager
def stage_progress() -> Iterator[Callable[..., None]]:
    """A ``progress(stage, done, total, unit="molecules", molecules=None, loss=None)`` callback: a rich bar a
    stage on a terminal (with molecules/s and the loss when given); off one, a line when a stage starts and a
    ``done/total`` line at most every `PLAIN_PROGRESS_EVERY_S`."""
    if console.is_terminal:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            tasks: dict[str, int] = {}

            def update(
                stage: str,
                done: int,
                total: int,
                unit: str = "molecules",
                molecules: int | None = None,
                loss: float | None = None,
            ) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total, info="")
                info = _rate_and_loss(progress.tasks[tasks[stage]].elapsed, molecules, loss)
                progress.update(tasks[stage], completed=done, total=total, info=info)

            yield update
    else:
        last: dict[str, float] = {}
        started: dict[str, float] = {}

        def update(
            stage: str,
            done: int,
            total: int,
            unit: str = "molecules",
            molecules: int | None = None,
            loss: float | None = None,
        ) -> None:
            now = time.monotonic()
            if stage not in last:
                started[stage] = now
                console.print(f"{stage} ({total} {unit})", markup=False, highlight=False)
            elif now - last[stage] >= PLAIN_PROGRESS_EVERY_S and done < total:
                info = _rate_and_loss(now - started[stage], molecules, loss)
                line = f"{stage}: {done}/{total} {unit}" + (f"  {info}" if info else "")
                console.print(line, markup=False, highlight=False)
            else:
                return
            last[stage] = now

        yield update
