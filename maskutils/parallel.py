"""Independent training runs on several CPU cores, with the results of a plain loop.

A comparison over seeds and settings is a loop of runs that share nothing. ``parallel_map``
computes ``[fn(*args) for args in settings]`` in worker processes forked from this one, one
run per task. A forked worker starts with a copy of the caller's state (models, loaders,
the function itself, even one defined in a notebook), so ``fn`` needs no pickling; only
its arguments and results travel, pickled.

The results are the loop's, bit for bit, when every run seeds what it draws (weights,
masks, batch order) from its arguments. Side effects stay in the workers: a global that
``fn`` changes, or a loader generator it advances, is unchanged in the caller afterwards,
so seed every later use yourself.

The loop runs in this process instead (the results are the same) when forking is not
safe or would not help: outside Linux, once CUDA has been initialized (a forked child
cannot use it), when torch already uses several threads per process (they share out the
cores), and for a single run or a single usable core.

>>> from maskutils.parallel import parallel_map
>>> parallel_map(pow, [(2, 3), (3, 2), (10, 0)])
[8, 9, 1]
"""
from __future__ import annotations

import multiprocessing
import numbers
import os
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence

import torch

_TASK: tuple[Callable, list[tuple]] | None = None  # set in the caller just before forking
_IN_WORKER = False  # true in a worker process: a run inside a run is not shared out again


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(n_runs: int, processes: int | None = None) -> int:
    """How many processes ``parallel_map`` uses for ``n_runs`` runs (1: the plain loop)."""
    _check_count(n_runs, "n_runs", minimum=0)
    if processes is not None:
        _check_count(processes, "processes", minimum=1)
    if not _fork_is_safe():
        return 1
    limit = usable_cores() if processes is None else processes
    return max(1, min(limit, usable_cores(), n_runs))


def _fork_is_safe() -> bool:
    if not sys.platform.startswith("linux"):
        return False  # macOS forks badly with Accelerate/Objective-C; Windows cannot fork
    if torch.cuda.is_initialized() or torch.get_num_threads() > 1:
        return False
    return not _IN_WORKER


def _mark_worker() -> None:
    global _IN_WORKER
    _IN_WORKER = True


def _check_count(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _import_what_every_run_imports() -> None:
    """The first optimizer a process creates imports ``torch._dynamo`` (a second or more):
    import it once here, so that the forked workers inherit it instead of each paying it."""
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # pragma: no cover - a torch without it
        pass


def _run_one(index: int) -> bytes:
    """In a worker: run ``index`` and its pickled result (the executor sends errors back)."""
    fn, settings = _TASK
    try:
        result = fn(*settings[index])
    except Exception as error:
        if hasattr(error, "add_note"):  # Python 3.11+
            error.add_note(f"in run {index} of parallel_map, arguments {settings[index]!r}")
        raise
    try:
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        raise RuntimeError(
            f"the result of run {index} {settings[index]!r} cannot be pickled to send it back "
            f"from its worker process ({type(error).__name__}: {error}). Return plain data "
            "(tensors, numbers, lists, dicts, state_dicts), or pass processes=1.") from None


def parallel_map(fn: Callable, settings: Sequence[tuple], processes: int | None = None) -> list:
    """``[fn(*args) for args in settings]``, its runs shared out among CPU cores.

    ``settings`` is a sequence of argument tuples, one per run. ``processes`` caps the number
    of worker processes (default: every usable core; see ``worker_count``). An exception in
    a run is raised here, with a note naming the run's arguments; a worker that dies raises
    ``concurrent.futures.process.BrokenProcessPool``.
    """
    global _TASK
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(settings, (str, bytes)) or not isinstance(settings, Sequence):
        raise TypeError("settings must be a list of argument tuples, one per run, "
                        f"got {type(settings).__name__}")
    settings = list(settings)
    for i, args in enumerate(settings):
        if not isinstance(args, tuple):
            raise TypeError(f"settings[{i}] must be a tuple of fn's arguments, got "
                            f"{args!r}; write ({args!r},) for a single argument")
    workers = worker_count(len(settings), processes)
    if workers == 1:
        return [fn(*args) for args in settings]
    _import_what_every_run_imports()
    _TASK = (fn, settings)  # the workers are forked below and inherit it
    try:
        fork = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=fork,
                                 initializer=_mark_worker) as pool:
            futures = [pool.submit(_run_one, i) for i in range(len(settings))]
            try:
                replies = [future.result() for future in futures]
            except BaseException:
                pool.shutdown(cancel_futures=True)  # do not start the remaining runs
                raise
    finally:
        _TASK = None
    return [pickle.loads(reply) for reply in replies]
