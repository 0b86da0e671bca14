"""Independent runs on several processes (maskutils.parallel)."""
from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest
import torch

from maskutils import digits_mlp, fit, mask_layers, seed_everything
from maskutils import parallel
from maskutils.parallel import parallel_map, worker_count

FORKS = parallel._fork_is_safe() and parallel.usable_cores() >= 2
needs_fork = pytest.mark.skipif(not FORKS, reason="needs Linux, 2 cores and one torch thread")


def tiny_loader(seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g))
            for _ in range(3)]


def seeded_run(seed, lr):
    """A short masked training run that draws everything from its seed."""
    seed_everything(seed)
    model = digits_mlp(hidden=(16, 16))
    mask_layers(model, 0.5, how="random", generator=torch.Generator().manual_seed(seed))
    sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    history = fit(model, tiny_loader(seed), epochs=3, optimizer=sgd, progress=False)
    return history, model.state_dict(), os.getpid()


SETTINGS = [(seed, lr) for seed in (0, 1, 2) for lr in (0.05, 0.1)]


@needs_fork
def test_runs_in_other_processes_and_equal_the_loop_bit_for_bit():
    shared = parallel_map(seeded_run, SETTINGS, processes=2)
    looped = [seeded_run(*args) for args in SETTINGS]
    assert all(pid != os.getpid() for _, _, pid in shared), "the runs ran in workers"
    for (h1, s1, _), (h2, s2, _) in zip(shared, looped):
        assert h1 == h2
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


@needs_fork
def test_the_order_of_results_follows_the_settings():
    assert parallel_map(pow, [(2, k) for k in range(12)], processes=2) == [
        2 ** k for k in range(12)]


SEEN: list = []


def remember(value):
    SEEN.append(value)
    return len(SEEN)


@needs_fork
def test_side_effects_stay_in_the_workers():
    SEEN.clear()
    parallel_map(remember, [(1,), (2,), (3,)], processes=2)
    assert SEEN == [], "a worker's changes do not reach the caller"
    assert parallel_map(remember, [(1,), (2,)], processes=1) == [1, 2]
    assert SEEN == [1, 2], "the plain loop runs here"


def refuse_odd(n):
    if n % 2:
        raise ValueError(f"odd {n}")
    return n


@needs_fork
def test_an_error_in_a_run_is_raised_with_its_arguments():
    with pytest.raises(ValueError, match="odd 3") as info:
        parallel_map(refuse_odd, [(0,), (2,), (3,), (4,)], processes=2)
    notes = " ".join(getattr(info.value, "__notes__", []))
    if hasattr(info.value, "add_note"):
        assert "run 2" in notes and "(3,)" in notes


def unpicklable(n):
    return lambda: n


@needs_fork
def test_a_result_that_cannot_travel_back_gets_a_clear_error():
    with pytest.raises(RuntimeError, match="cannot be pickled.*processes=1"):
        parallel_map(unpicklable, [(1,), (2,)], processes=2)
    assert parallel_map(unpicklable, [(1,)], processes=1)[0]() == 1


def die(n):
    os._exit(3)


@needs_fork
def test_a_worker_that_dies_raises_instead_of_hanging():
    with pytest.raises(BrokenProcessPool):
        parallel_map(die, [(1,), (2,)], processes=2)


def nested_workers(n):
    return worker_count(4)


@needs_fork
def test_a_run_inside_a_run_is_not_shared_out_again():
    assert parallel_map(nested_workers, [(1,), (2,)], processes=2) == [1, 1]


def test_worker_count_respects_runs_cap_and_threads():
    assert worker_count(1) == 1
    assert worker_count(0) == 1
    assert worker_count(10, processes=1) == 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert worker_count(10) == 1, "several torch threads already share the cores"
    finally:
        torch.set_num_threads(threads)
    if FORKS:
        assert worker_count(10, processes=2) == 2
        assert worker_count(10) == min(10, parallel.usable_cores())


@pytest.mark.parametrize("settings, message", [
    ("abc", "list of argument tuples"),
    (5, "list of argument tuples"),
    ([(1,), 2], r"settings\[1\] must be a tuple.*\(2,\)"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(TypeError, match=message):
        parallel_map(pow, settings)


@pytest.mark.parametrize("processes", [0, -1, True, 1.5, "2"])
def test_bad_process_counts_are_refused(processes):
    with pytest.raises(ValueError, match="processes must be an int >= 1"):
        parallel_map(pow, [(2, 2)], processes=processes)


def test_fn_must_be_callable():
    with pytest.raises(TypeError, match="fn must be callable"):
        parallel_map(3, [(1,)])


def test_no_runs_give_no_results():
    assert parallel_map(pow, []) == []
