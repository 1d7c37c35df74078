"""Process groups: one process, N spawned processes on this node, or a torchrun launch.

`launch()` is the one launcher of training and benchmarks; `run_worker()`
is what every rank runs around the work itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from se3pyg.allocator import keep_freed_memory
from se3pyg.processes import STOP_SIGNALS, Interrupted, end_with_parent, stop_signal, stop_signals_noted

R = TypeVar("R")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a run: its rank, its rank on this node, the number of ranks, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether this process is a rank that ``torchrun`` (or another launcher setting ``RANK`` and ``WORLD_SIZE``)
    started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def is_main_process() -> bool:
    """Whether this process is (or will be) rank 0: the launcher, or torchrun's rank 0."""
    return int(os.environ.get("RANK", "0")) == 0


def free_port() -> int:
    """A TCP port free on the loopback interface now (the operating system's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init(use_cuda: bool, timeout: timedelta | None = None) -> DistInfo:
    """Join the process group described by the environment (``RANK``, ``WORLD_SIZE``, ...), if any.

    ``timeout`` bounds each collective (torch's default, 30 min for gloo and NCCL, leaves room for a data build).

    Args:
        use_cuda: one GPU a process (NCCL) rather than the CPU (gloo).
        timeout: the collectives' timeout (``None``: torch's).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        rendezvous = os.environ.get(_RENDEZVOUS)  # spawned ranks meet in a file, torchrun's at MASTER_ADDR
        init_method = f"file://{rendezvous}" if rendezvous else None
        dist.init_process_group(backend, init_method=init_method, timeout=timeout, world_size=world_size, rank=rank)
    return DistInfo(rank, local_rank, world_size, device)


def barrier(info: DistInfo) -> None:
    """Wait for every rank of ``info``'s process group (nothing to wait for in one process).

    Args:
        info: this rank's place in the run (`init()`).
    """
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``tensor`` summed over every rank, in place, and returned.

    Args:
        tensor: this rank's part.
        info: this rank's place in the run (`init()`).
    """
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``tensor``'s largest value over every rank, element by element, in place, and returned.

    Args:
        tensor: this rank's part.
        info: this rank's place in the run (`init()`).
    """
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def gather_on_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; ``None`` on the other ranks.

    Args:
        obj: this rank's picklable object.
        info: this rank's place in the run.
    """
    if not info.distributed:
        return [obj]
    gathered: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


_SPAWNED = "SE3PYG_SPAWNED_WORKER"
#: The file in which spawned ranks meet (torch's FileStore): no rendezvous server listens on any interface.
_RENDEZVOUS = "SE3PYG_RENDEZVOUS_FILE"


def loopback_interface() -> str:
    """The name of this machine's loopback network interface (``lo`` on Linux, ``lo0`` on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((name for name in names if name.startswith("lo")), "lo")


def shutdown() -> None:
    """Leave the process group; in workers of `spawn()` it is left by the process's exit instead.

    Destroying a gloo group joins its threads while holding the GIL, and a thread still releasing the
    last work item needs the GIL: an occasional deadlock at the very end of a run. Spawned workers skip
    the destructor and end with ``os._exit`` once their work is done.
    """
    if dist.is_initialized() and not os.environ.get(_SPAWNED):
        dist.destroy_process_group()


def _worker(local_rank: int, world_size: int, rendezvous: str, fn: Callable[..., Any], args: tuple) -> None:
    end_with_parent()  # a killed launcher takes its ranks with it
    for transport in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):  # ranks of one node talk over loopback only
        os.environ.setdefault(transport, loopback_interface())
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        **{_SPAWNED: "1", _RENDEZVOUS: rendezvous},
    )
    try:
        with stop_signals_noted():  # the launcher's stop, passed on, ends a rank as a stopped run ends
            fn(*args)  # an exception propagates to torch.multiprocessing, which reports it and exits non-zero
    finally:  # the work is over: a launcher ending the other ranks of a failed run ends this one quietly
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn: Callable[..., Any], nprocs: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``nprocs`` processes of one process group on this node, which meet in a file and talk
    over the loopback interface (nothing listens on the network). A stop signal noted here
    (`stop_signals_noted()`) is passed on to the ranks, which end as a stopped
    run does (rank
    0 saves and marks its run KILLED); once they have ended (a minute at most), `Interrupted` is raised.

    Args:
        fn: what each process runs (picklable, as its arguments).
        nprocs: the processes.
        *args: ``fn``'s arguments.

    Raises:
        Interrupted: a stop signal, once the ranks have ended.
    """
    # a failed rank is reported as one error: not also the ranks torch then ends (its warning for each)
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="se3pyg-rendezvous-") as folder:
        rendezvous = os.path.join(folder, "store")
        context = torch.multiprocessing.spawn(_worker, args=(nprocs, rendezvous, fn, args), nprocs=nprocs, join=False)
        while not context.join(timeout=0.2):
            if (stop := stop_signal()) is not None:
                _end_ranks(context.processes, stop)
                raise Interrupted(stop)


def _end_ranks(processes: list[Any], stop: int) -> None:
    """Pass ``stop`` on to the ranks still running and wait for them (a minute, then SIGKILL)."""
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, stop)
    deadline = time.monotonic() + 60
    for process in processes:
        process.join(timeout=max(deadline - time.monotonic(), 0))
        if process.is_alive():
            process.kill()
            process.join()


def spawns(world_size: int) -> bool:
    """Whether `launch()` starts ``world_size`` processes itself (not one process, not under torchrun).

    Args:
        world_size: the processes the run asks for.
    """
    return world_size > 1 and not launched_by_torchrun()


class _Relay:
    """A callback's stand-in in spawned ranks: a call is put on a queue, and made in the launcher."""

    def __init__(self, queue: Any, index: int) -> None:
        self.queue, self.index = queue, index

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.queue.put((self.index, args, kwargs))


@contextlib.contextmanager
def relayed(*callbacks: Callable[..., None] | None) -> Iterator[tuple[Callable[..., None] | None, ...]]:
    """Stand-ins for ``callbacks`` (``None`` stays ``None``) to pass to spawned ranks: what they are called with
    (picklable values) comes back through a queue and is passed on here, in order, by a thread of the launcher.

    Args:
        *callbacks: the callbacks to relay (``None`` stays ``None``).
    """
    queue = torch.multiprocessing.get_context("spawn").SimpleQueue()

    def pump() -> None:
        while (call := queue.get()) is not None:
            index, args, kwargs = call
            callbacks[index](*args, **kwargs)  # type: ignore[misc]

    thread = threading.Thread(target=pump, name="se3pyg-relay", daemon=True)
    thread.start()
    try:
        yield tuple(None if callback is None else _Relay(queue, k) for k, callback in enumerate(callbacks))
    finally:
        queue.put(None)
        thread.join(timeout=10)


def launch(
    worker: Callable[..., R],
    world_size: int,
    use_cuda: bool,
    *args: Any,
    prepare: Callable[[], object] | None = None,
) -> R | None:
    """Run ``worker(info, *args)`` on every rank: in this process, as a torchrun rank, or in spawned ones.

    ``prepare`` runs once before processes are spawned (e.g. a data build they would otherwise race for).
    Returns rank 0's result, also in a launcher that spawned; ``None`` on the other ranks. An exception
    of a spawned rank is raised again here, as itself.

    Args:
        worker: ``worker(info, *args)``, one rank's work.
        world_size: the ranks.
        use_cuda: one GPU a rank.
        *args: ``worker``'s arguments after ``info`` (picklable for spawned ranks).
        prepare: run once before the ranks start.
    """
    if not spawns(world_size):
        return run_worker(worker, use_cuda, *args)
    if prepare is not None:
        prepare()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.pkl"
        try:
            spawn(_run_and_report, world_size, worker, use_cuda, args, str(out))
        except Interrupted as exc:  # the ranks' own account of the stop (a TrainingError's), when they gave one
            error = _first_error(Path(scratch))
            raise error if getattr(error, "code", None) is not None else exc from None
        except torch.multiprocessing.ProcessExitedException as exc:
            if exc.signal_name:  # the others' errors (a peer gone from the collectives) follow from this one
                raise RankError(f"rank {exc.error_index} was ended by {exc.signal_name}; the run stopped") from None
            raise _first_error(Path(scratch)) or exc from None
        except Exception as exc:
            raise _first_error(Path(scratch)) or exc from None
        return pickle.loads(out.read_bytes())


class RankError(RuntimeError):
    """A spawned rank ended without an error of its own (killed): the run cannot go on."""


def _first_error(scratch: Path) -> Exception | None:
    """The exception the lowest failing rank raised (left in ``scratch`` by `_run_and_report()`), if any."""
    errors = sorted(scratch.glob("error-*.pkl"))
    return pickle.loads(errors[0].read_bytes()) if errors else None


def run_worker(worker: Callable[..., R], use_cuda: bool, *args: Any) -> R | None:
    """One rank: keep freed host memory, join the process group, ``worker(info, *args)``, leave the group.

    Args:
        worker: ``worker(info, *args)``.
        use_cuda: one GPU a rank.
        *args: ``worker``'s arguments after ``info``.
    """
    keep_freed_memory()
    info = init(use_cuda)
    try:
        result = worker(info, *args)
        return result if info.is_main else None
    finally:
        shutdown()


def _run_and_report(worker: Callable[..., Any], use_cuda: bool, args: tuple, out: str) -> None:
    """A spawned rank: rank 0 leaves its result in ``out``; a failing rank leaves its exception beside it."""
    try:
        result = run_worker(worker, use_cuda, *args)
    except Exception as exc:
        Path(out).with_name(f"error-{os.environ['RANK']}.pkl").write_bytes(pickle.dumps(exc))
        raise
    if result is not None:
        Path(out).write_bytes(pickle.dumps(result))
