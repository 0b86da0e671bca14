"""What masking costs in time: training steps side by side, and sparse matrix products.

``python -m maskutils.bench`` times one training step (forward, backward, SGD with momentum)
of an MLP of ``layers`` x ``Linear(width, width)`` with ReLU in between, dense and with each
way of enforcing a fixed mask from chapter 2, and prints the median time per step with the
ratio to dense. The variants run in interleaved rounds in one process (every round times
each variant once, in a rotating order), so drift and background load hit all of them alike.

>>> from maskutils.bench import format_table, run_benchmark
>>> result = run_benchmark(batch_sizes=(4,), width=16, layers=2, rounds=2,
...                        steps_per_round=1, device="cpu")
>>> [row["variant"] for row in result["rows"]]
['dense', 'apply_mask', 'project_after_step', 'mask_gradients', 'prune']
>>> "x dense" in format_table(result)
True

``python -m maskutils.bench --inference`` answers the other question, what pruning buys at
inference: it trains the wide digits MLP (64 -> 1024 -> 1024 -> 10) and prints dense, masked
(unstructured), CSR and shrunk (structured) side by side, with the milliseconds per batch,
the bytes on disk and the test accuracy of each (``run_inference_benchmark``). The helpers it
uses are public: ``inference_times`` and ``crossover_sparsity`` here, ``csr_model``,
``plain_state`` and ``storage_bytes`` in ``maskutils.storage`` (importable from here too).

Command line (``--help`` lists the options)::

    python -m maskutils.bench                      # 3 x Linear(1024), batch 32 and 256
    python -m maskutils.bench --batch-sizes 64 --json
    python -m maskutils.bench --inference          # dense / masked / CSR / shrunk
    python -m maskutils.bench --structured         # chapter 10: dense vs shrunk

``python -m maskutils.bench --structured`` times chapter 10's models, dense and with half of
the units of every dependency group cut out (``run_structured_benchmark``): a residual CNN,
a LLaMA built from a config and the character transformer, with parameters and MACs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import inspect
import json
import math
import numbers
import statistics
import sys
import time
import warnings
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune

from .apply import apply_mask
from .device import banner, get_device
from .hooks import mask_gradients, project_after_step
from .masks import check_sparsity, magnitude_mask
# the sparse formats live in maskutils.storage; imported here by their old names too
from .storage import (FORMATS, CSRLinear, csr_model, plain_state,  # noqa: F401
                      storage_bytes, storage_sizes)

VARIANTS = ("dense", "apply_mask", "project_after_step", "mask_gradients", "prune")
"""The variants, in table order: no mask, then the enforcement strategies of chapter 2."""

DESCRIPTIONS = {
    "dense": "no mask (the baseline)",
    "apply_mask": "maskutils.apply_mask (parametrize: weight = original * mask)",
    "project_after_step": "maskutils.project_after_step (re-zero after optimizer.step)",
    "mask_gradients": "maskutils.mask_gradients (zero the masked gradients)",
    "prune": "torch.nn.utils.prune.custom_from_mask (forward pre-hook)",
}


# ---------------------------------------------------------------- checking the arguments
def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _threads(value) -> int | None:
    return None if value is None else _positive_int(value, "threads")


@contextlib.contextmanager
def _num_threads(threads: int | None):
    """``torch.set_num_threads(threads)`` inside the block (``None``: left as it is)."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _batch_sizes(values) -> tuple[int, ...]:
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        values = (values,)
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(f"batch_sizes must be a sequence of positive ints, got {values!r}") from None
    if not values:
        raise ValueError("batch_sizes is empty; give at least one batch size, e.g. (32, 256)")
    sizes = tuple(_positive_int(b, "each batch size") for b in values)
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"batch_sizes has repeats: {sizes}; give each size once")
    return sizes


def _device(value) -> torch.device:
    if value is None:
        return get_device()
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {value!r} is not a device torch knows; use cpu, cuda or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {value!r} asked for, but CUDA is not available; use cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise ValueError(f"device {value!r} asked for, but MPS is not available; use cpu")
    return device


def _selection(values, allowed, what: str) -> tuple[str, ...]:
    """One name or several, all from ``allowed``, at least one."""
    values = (values,) if isinstance(values, str) else tuple(values)
    if not values or any(v not in allowed for v in values):
        raise ValueError(f"{what} must be a non-empty selection of {list(allowed)}, "
                         f"got {list(values)}")
    return values


def _variants(values) -> tuple[str, ...]:
    values = _selection(values, VARIANTS, "variants")
    if "dense" not in values:
        values = ("dense", *values)  # the ratios need the baseline
    return tuple(v for v in VARIANTS if v in values)


# ---------------------------------------------------------------- timing
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_interleaved(calls: dict[object, Callable[[], object]], rounds: int = 10,
                     calls_per_round: int = 1, warmup_rounds: int = 1,
                     device: torch.device | str = "cpu") -> dict[object, list[float]]:
    """Seconds per call of each function, one value per round, measured in interleaved rounds.

    Every round calls each function ``calls_per_round`` times in a row, and the order of the
    functions rotates from round to round, so a slow moment of the machine hits all of them.
    ``warmup_rounds`` rounds run first and are not recorded.

    >>> times = time_interleaved({"sum": lambda: sum(range(100))}, rounds=3)
    >>> len(times["sum"]), min(times["sum"]) > 0
    (3, True)
    """
    if not isinstance(calls, dict) or not calls:
        raise ValueError("calls must be a non-empty dict {name: function taking no arguments}")
    for name, fn in calls.items():
        if not callable(fn):
            raise TypeError(f"calls[{name!r}] must be callable, got {type(fn).__name__}")
    rounds = _positive_int(rounds, "rounds")
    calls_per_round = _positive_int(calls_per_round, "calls_per_round")
    if isinstance(warmup_rounds, bool) or not isinstance(warmup_rounds, numbers.Integral) \
            or warmup_rounds < 0:
        raise ValueError(f"warmup_rounds must be an int >= 0, got {warmup_rounds!r}")
    device = torch.device(device)
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of one variant's round would bias it
    try:
        for r in range(warmup_rounds + rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn = calls[name]
                _synchronize(device)
                start = time.perf_counter()
                for _ in range(calls_per_round):
                    fn()
                _synchronize(device)
                if r >= warmup_rounds:
                    times[name].append((time.perf_counter() - start) / calls_per_round)
    finally:
        if was_enabled:
            gc.enable()
    return times


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


# ---------------------------------------------------------------- the training-step benchmark
def make_mlp(width: int = 1024, layers: int = 3) -> nn.Sequential:
    """``layers`` x ``Linear(width, width)`` with ReLU in between (the benchmark's model).

    >>> make_mlp(8, 2)
    Sequential(
      (0): Linear(in_features=8, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=8, bias=True)
    )
    """
    width = _positive_int(width, "width")
    layers = _positive_int(layers, "layers")
    modules: list[nn.Module] = []
    for i in range(layers):
        if i:
            modules.append(nn.ReLU())
        modules.append(nn.Linear(width, width))
    return nn.Sequential(*modules)


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _prepare(variant: str, base: nn.Module, masks: list[torch.Tensor], lr: float):
    """An identical copy of ``base`` masked the way ``variant`` says, and its optimizer."""
    model = copy.deepcopy(base)
    layers = _linears(model)
    handles = []
    if variant == "apply_mask":
        for layer, mask in zip(layers, masks):
            apply_mask(layer, mask)
    elif variant == "prune":
        for layer, mask in zip(layers, masks):
            prune.custom_from_mask(layer, "weight", mask)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    weights = {layer.weight: mask for layer, mask in zip(layers, masks)}
    if variant == "project_after_step":
        handles.append(project_after_step(optimizer, weights))
    elif variant == "mask_gradients":
        handles.append(mask_gradients(weights))
    return model, optimizer, handles


def _train_step(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.mse_loss(model(x), y).backward()
    optimizer.step()


def run_benchmark(batch_sizes=(32, 256), width: int = 1024, layers: int = 3,
                  rounds: int = 20, steps_per_round: int = 5, threads: int | None = 1,
                  device=None, sparsity: float = 0.9, variants=VARIANTS,
                  seed: int = 0) -> dict:
    """Median time of one training step per variant and batch size, with the ratio to dense.

    All variants train identical copies of one model with the same magnitude masks (``sparsity``
    removed in every layer), each with its own SGD (momentum 0.9), on the same random batch.
    ``threads`` sets ``torch.set_num_threads`` for the run (restored afterwards; ``None`` leaves
    it as it is). Returns a dict: ``"banner"`` (hardware and versions), ``"config"``, and
    ``"rows"``, one per batch size and variant, each with ``median_s``, ``q1_s``, ``q3_s``
    (quartiles over rounds), ``ratio`` (median / dense median) and ``times_s``.

    >>> r = run_benchmark(batch_sizes=(2,), width=8, layers=1, rounds=1, steps_per_round=1,
    ...                   device="cpu", variants=("dense", "prune"))
    >>> [(row["variant"], row["ratio"] > 0) for row in r["rows"]]
    [('dense', True), ('prune', True)]
    """
    sizes = _batch_sizes(batch_sizes)
    width = _positive_int(width, "width")
    layers = _positive_int(layers, "layers")
    rounds = _positive_int(rounds, "rounds")
    steps_per_round = _positive_int(steps_per_round, "steps_per_round")
    threads = _threads(threads)
    device = _device(device)
    sparsity = check_sparsity(sparsity)
    if sparsity == 1.0:
        raise ValueError("sparsity must be below 1 (a mask keeping nothing trains nothing)")
    chosen = _variants(variants)

    with _num_threads(threads):
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            base = make_mlp(width, layers).to(device)
        masks = [magnitude_mask(layer.weight.detach(), sparsity) for layer in _linears(base)]
        prepared = {v: _prepare(v, base, masks, lr=1e-3) for v in chosen}
        rows = []
        for batch in sizes:
            x = torch.randn(batch, width, generator=generator).to(device)
            y = torch.randn(batch, width, generator=generator).to(device)
            calls = {v: (lambda m=m, o=o: _train_step(m, o, x, y))
                     for v, (m, o, _) in prepared.items()}
            times = time_interleaved(calls, rounds=rounds, calls_per_round=steps_per_round,
                                     device=device)
            dense = statistics.median(times["dense"])
            for v in chosen:
                q1, q3 = _quartiles(times[v])
                median = statistics.median(times[v])
                rows.append({"batch_size": batch, "variant": v, "median_s": median,
                             "q1_s": q1, "q3_s": q3, "ratio": median / dense,
                             "times_s": times[v]})
        for _, _, handles in prepared.values():
            for handle in handles:
                handle.remove()
        info = banner(device)  # after set_num_threads, so it names the threads used
    config = {"batch_sizes": list(sizes), "width": width, "layers": layers, "rounds": rounds,
              "steps_per_round": steps_per_round, "threads": threads, "device": str(device),
              "sparsity": sparsity, "variants": list(chosen), "seed": seed,
              "optimizer": "SGD(lr=1e-3, momentum=0.9)", "loss": "mse_loss"}
    return {"banner": info, "config": config, "rows": rows}


def format_table(result: dict) -> str:
    """The result of ``run_benchmark`` as a text table, one block per batch size.

    The spread column is the interquartile range over rounds, as a percentage of the median:
    a rough measure of how noisy the machine was.
    """
    if not isinstance(result, dict) or "rows" not in result or "config" not in result:
        raise ValueError("result must be the dict that run_benchmark returns")
    cfg = result["config"]
    lines = [result.get("banner", ""),
             f"model: {cfg['layers']} x Linear({cfg['width']}, {cfg['width']}) with ReLU, "
             f"sparsity {cfg['sparsity']:.0%}",
             f"optimizer: {cfg['optimizer']}",
             f"time: median of {cfg['rounds']} interleaved rounds x {cfg['steps_per_round']} "
             "steps; spread: IQR / median"]
    header = f"{'variant':<20}{'ms/step':>10}{'spread':>9}{'x dense':>9}"
    for batch in cfg["batch_sizes"]:
        lines += ["", f"batch size {batch}", header, "-" * len(header)]
        for row in result["rows"]:
            if row["batch_size"] != batch:
                continue
            spread = (row["q3_s"] - row["q1_s"]) / row["median_s"] if row["median_s"] else 0.0
            lines.append(f"{row['variant']:<20}{row['median_s'] * 1e3:>10.2f}"
                         f"{spread:>8.0%} {row['ratio']:>8.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- sparse matrix products
def matmul_sweep(sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99), size: int = 1024,
                 batch: int = 64, rounds: int = 5, calls_per_round: int = 2,
                 device="cpu", seed: int = 0) -> dict:
    """Time ``W @ X`` for a ``size`` x ``size`` weight at each sparsity, three ways.

    - ``dense``: the masked weight as an ordinary dense tensor (zeros are multiplied too);
    - ``csr``: the same weight stored as ``torch.sparse_csr`` (only non-zeros are stored);
    - ``rows``: a structured alternative, the dense weight with that fraction of whole rows
      removed (a smaller dense matrix).

    One random weight is masked at every level by one random order of its entries (so the
    zeros of a level include those of the levels below, and a sweep draws its random numbers
    once): exactly ``round(sparsity * size**2)`` zeros up to 2048 x 2048; above that, where
    a random permutation is slow, the entries whose uniform random score falls below the
    sparsity (the fraction removed is then the sparsity up to sampling noise, under 0.1 %). ``X`` is ``size`` x ``batch``. All products of all levels are timed
    together in interleaved rounds, and each value is the *fastest* round's time per
    product (the one least disturbed by other load on the machine). Returns ``{"sparsity",
    "dense_s", "csr_s", "rows_s"}`` (lists of seconds per product, one per sparsity) and
    ``"max_error"``: the largest difference between the CSR and the dense result, relative
    to the largest entry of the dense result.

    >>> r = matmul_sweep((0.5, 0.9), size=32, batch=4, rounds=1, calls_per_round=1)
    >>> len(r["csr_s"]), r["max_error"] < 1e-5
    (2, True)
    """
    if isinstance(sparsities, numbers.Real):
        sparsities = (sparsities,)
    levels = [check_sparsity(s, "each sparsity") for s in sparsities]
    if not levels:
        raise ValueError("sparsities is empty; give at least one, e.g. (0.5, 0.9)")
    if any(s == 1.0 for s in levels):
        raise ValueError("each sparsity must be below 1 (an all-zero weight has no product)")
    size = _positive_int(size, "size")
    batch = _positive_int(batch, "batch")
    device = _device(device)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, batch, generator=generator).to(device)
    weight = torch.randn(size, size, generator=generator)
    by_order = size <= 2048
    if by_order:
        order = torch.randperm(size * size, generator=generator)
    else:
        scores = torch.rand(size * size, generator=generator)
    calls, max_error = {}, 0.0
    for i, level in enumerate(levels):
        if by_order:
            mask = torch.ones(size * size)
            mask[order[:round(level * size * size)]] = 0
        else:
            mask = (scores >= level).to(weight.dtype)
        dense = (weight * mask.view(size, size)).to(device)
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta"
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support")
            csr = dense.to_sparse_csr()
        kept_rows = max(1, round((1 - level) * size))
        rows = weight[:kept_rows].contiguous().to(device)
        exact = dense @ x
        error = (csr @ x - exact).abs().max() / exact.abs().max().clamp_min(1e-30)
        max_error = max(max_error, float(error))
        for kind, matrix in (("dense", dense), ("csr", csr), ("rows", rows)):
            calls[kind, i] = (lambda m=matrix: m @ x)
    times = time_interleaved(calls, rounds=rounds, calls_per_round=calls_per_round,
                             device=device)
    out = {"sparsity": levels, "max_error": max_error}
    for kind in ("dense", "csr", "rows"):
        out[f"{kind}_s"] = [min(times[kind, i]) for i in range(len(levels))]
    return out


# ---------------------------------------------------------------- timing inference
def inference_times(models: dict, batch_sizes=(1, 256), n_in: int | None = None,
                    rounds: int = 10, calls_per_round=None, device=None,
                    seed: int = 0) -> dict:
    """Median seconds per forward pass of each model at each batch size, under
    ``torch.inference_mode()``, all models timed in the same interleaved rounds.

    - ``models``: ``{name: module}`` (each put in eval mode for the timing, mode restored).
    - ``n_in``: input features (default: ``in_features`` of the first Linear found).
    - ``calls_per_round``: forward passes per model per round; by default
      ``max(1, 32 // batch)``, so the tiny batch-1 calls are timed over several passes.

    Returns ``{name: {batch: median seconds}}``.

    >>> t = inference_times({"a": nn.Linear(4, 2)}, batch_sizes=(1, 8), rounds=2)
    >>> sorted(t["a"]), all(v > 0 for v in t["a"].values())
    ([1, 8], True)
    """
    if not isinstance(models, dict) or not models or not all(
            isinstance(m, nn.Module) for m in models.values()):
        raise ValueError("models must be a non-empty dict {name: nn.Module}")
    sizes = _batch_sizes(batch_sizes)
    rounds = _positive_int(rounds, "rounds")
    device = _device(device)
    if n_in is None:
        first = next((m for model in models.values() for m in model.modules()
                      if isinstance(m, (nn.Linear, CSRLinear))), None)
        if first is None:
            raise ValueError("no Linear layer found; give n_in, the number of input features")
        n_in = first.in_features
    n_in = _positive_int(n_in, "n_in")
    generator = torch.Generator().manual_seed(seed)
    modes = [(m, m.training) for model in models.values() for m in model.modules()]
    out: dict = {name: {} for name in models}
    try:
        for model in models.values():
            model.eval()
        for batch in sizes:
            per_round = calls_per_round or max(1, 32 // batch)
            x = torch.randn(batch, n_in, generator=generator).to(device)

            def call(model, x=x):
                with torch.inference_mode():
                    model(x)

            calls = {name: (lambda m=model: call(m)) for name, model in models.items()}
            times = time_interleaved(calls, rounds=rounds, calls_per_round=per_round,
                                     device=device)
            for name in models:
                out[name][batch] = statistics.median(times[name])
    finally:
        for m, mode in modes:
            m.training = mode
    return out


def crossover_sparsity(sparsities, dense_s, sparse_s) -> float | None:
    """The sparsity at which the sparse time first falls below the dense time, interpolated
    linearly in the log of the time ratio between the two measured levels around it; the
    first level if sparse already wins there; ``None`` if it never wins in the range.

    >>> crossover_sparsity([0.5, 0.9], [1.0, 1.0], [2.0, 0.5])
    0.7
    """
    xs, ds, ss = list(sparsities), list(dense_s), list(sparse_s)
    if not (len(xs) == len(ds) == len(ss)) or not xs:
        raise ValueError("sparsities, dense_s and sparse_s must be non-empty and of one length")
    logs = [math.log(s / d) for d, s in zip(ds, ss)]
    if logs[0] < 0:
        return float(xs[0])
    for i in range(1, len(xs)):
        if logs[i] < 0:
            t = logs[i - 1] / (logs[i - 1] - logs[i])
            return round(float(xs[i - 1] + t * (xs[i] - xs[i - 1])), 6)
    return None


# ---------------------------------------------------------------- the inference benchmark
INFERENCE_VARIANTS = ("dense", "masked", "csr", "shrunk")
"""The rows of the inference table, in order."""

INFERENCE_DESCRIPTIONS = {
    "dense": "the trained dense model",
    "masked": "apply_mask, unstructured (gradual magnitude pruning)",
    "csr": "the masked weights stored as CSR (csr_model)",
    "shrunk": "hidden units removed by row norm, then shrink",
}


def run_inference_benchmark(batch_sizes=(1, 256), hidden=(1024, 1024),
                            sparsity: float = 0.95, units_kept: float = 0.25,
                            epochs: int = 10, finetune_epochs: int = 10, rounds: int = 20,
                            threads: int | None = 1, device=None, seed: int = 0,
                            progress: bool = False) -> dict:
    """Inference of the wide digits MLP: dense, masked, CSR and shrunk, side by side.

    1. A ``DigitsMLP(hidden)`` trains ``epochs`` epochs on the digits (Adam, lr 2e-3, the
       training part of ``digits_loaders(validation=True)``).
    2. ``masked``: a copy pruned to ``sparsity`` of its weights by
       ``maskutils.pruning.gradual_magnitude_prune`` (global, ``finetune_epochs`` epochs);
       ``csr``: the same weights as CSR (``csr_model``).
    3. ``shrunk``: a copy with ``1 - units_kept`` of each hidden layer's units removed by
       row norm (``prune_units``), cut out by ``shrink``, and fine-tuned ``finetune_epochs``
       epochs (training the smaller model is the same as training the masked one, whose
       removed units get no gradient, and faster).
    4. Every model is timed at every batch size in interleaved rounds (``inference_times``)
       with ``threads`` threads, and stored (``storage_bytes``, raw and deflated).

    Returns ``{"banner", "config", "rows", "storage"}``: one row per variant with
    ``ms`` (``{batch: ms per batch}``), ``ratio`` (``{batch: time / dense time}``),
    ``bytes`` and ``zip_bytes`` (its own format: dense, the masked checkpoint with its
    masks, CSR, the shrunk dense model), ``params`` and ``val_acc``/``test_acc``; and
    ``storage``, the masked model's bytes in every format of ``FORMATS``, raw and zipped.
    ``epochs=0`` skips training (for quick checks of the machinery).

    >>> r = run_inference_benchmark(batch_sizes=(1,), hidden=(16, 16), epochs=0,
    ...                             finetune_epochs=0, rounds=1, device="cpu")
    >>> [row["variant"] for row in r["rows"]]
    ['dense', 'masked', 'csr', 'shrunk']
    """
    from .data import digits_loaders
    from .models import DigitsMLP
    from .pruning import gradual_magnitude_prune
    from .structured import count_parameters, prune_units, shrink
    from .train import evaluate, fit

    sizes = _batch_sizes(batch_sizes)
    hidden = tuple(_positive_int(h, "each hidden size") for h in hidden)
    if not hidden:
        raise ValueError("hidden must name at least one hidden layer, e.g. (1024, 1024)")
    sparsity = check_sparsity(sparsity)
    if sparsity == 1.0:
        raise ValueError("sparsity must be below 1 (a model without weights computes nothing)")
    if isinstance(units_kept, bool) or not isinstance(units_kept, numbers.Real) \
            or not 0.0 < float(units_kept) <= 1.0:
        raise ValueError(f"units_kept must be in (0, 1] (the fraction of hidden units kept), "
                         f"got {units_kept!r}")
    for value, what in ((epochs, "epochs"), (finetune_epochs, "finetune_epochs")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    rounds = _positive_int(rounds, "rounds")
    threads = _threads(threads)
    device = _device(device)

    with _num_threads(threads):
        train, val, test = digits_loaders(batch_size=64, seed=seed, device=device,
                                          validation=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dense = DigitsMLP(hidden).to(device)
            fit(dense, train, epochs=epochs, lr=2e-3, progress=progress)
            quiet = ({"progress": progress} if "progress" in
                     inspect.signature(gradual_magnitude_prune).parameters else {})
            masked = gradual_magnitude_prune(copy.deepcopy(dense), train, sparsity,
                                             epochs=finetune_epochs, scope="global",
                                             lr=2e-3, **quiet)
            unit_model = copy.deepcopy(dense)
            prune_units(unit_model, 1.0 - float(units_kept))
            shrunk = shrink(unit_model)
            fit(shrunk, train, epochs=finetune_epochs, lr=2e-3, progress=progress)
        models = {"dense": dense, "masked": masked, "csr": csr_model(masked),
                  "shrunk": shrunk}
        times = inference_times(models, sizes, rounds=rounds, device=device, seed=seed)
        own = {"dense": storage_bytes(dense.state_dict()),
               "masked": storage_bytes(masked.state_dict()),
               "csr": storage_bytes(masked, "csr"),
               "shrunk": storage_bytes(shrunk.state_dict())}
        own_zip = {"dense": storage_bytes(dense.state_dict(), compress=True),
                   "masked": storage_bytes(masked.state_dict(), compress=True),
                   "csr": storage_bytes(masked, "csr", compress=True),
                   "shrunk": storage_bytes(shrunk.state_dict(), compress=True)}
        accuracy = {name: (evaluate(models[name], val), evaluate(models[name], test))
                    for name in ("dense", "masked", "shrunk")}
        accuracy["csr"] = accuracy["masked"]
        rows = []
        for name in INFERENCE_VARIANTS:
            rows.append({
                "variant": name,
                "ms": {b: times[name][b] * 1e3 for b in sizes},
                "ratio": {b: times[name][b] / times["dense"][b] for b in sizes},
                "bytes": own[name], "zip_bytes": own_zip[name],
                "params": (count_parameters(shrunk) if name == "shrunk"
                           else count_parameters(dense)),
                "nonzero_weights": sum(int((t != 0).sum()) for k, t in
                                       plain_state(models["masked" if name == "csr"
                                                          else name]).items()),
                "val_acc": accuracy[name][0], "test_acc": accuracy[name][1]})
        storage = {fmt: {"bytes": storage_bytes(masked, fmt),
                         "zip_bytes": storage_bytes(masked, fmt, compress=True)}
                   for fmt in FORMATS}
        info = banner(device)
    config = {"batch_sizes": list(sizes), "hidden": list(hidden), "sparsity": sparsity,
              "units_kept": float(units_kept),
              "shrunk_hidden": [m.out_features for m in shrunk.linears()[:-1]],
              "epochs": epochs, "finetune_epochs": finetune_epochs, "rounds": rounds,
              "threads": threads, "device": str(device), "seed": seed}
    return {"banner": info, "config": config, "rows": rows, "storage": storage}


def format_inference_table(result: dict) -> str:
    """The result of ``run_inference_benchmark`` as text: one line per variant with ms per
    batch and the ratio to dense at each batch size, bytes on disk (raw and zipped) and the
    test accuracy; then the masked model's bytes in each storage format."""
    if not isinstance(result, dict) or "rows" not in result or "storage" not in result:
        raise ValueError("result must be the dict that run_inference_benchmark returns")
    cfg = result["config"]
    sizes = cfg["batch_sizes"]
    hidden = " -> ".join(str(h) for h in [64, *cfg["hidden"], 10])
    kept = " -> ".join(str(h) for h in [64, *cfg["shrunk_hidden"], 10])
    lines = [result.get("banner", ""),
             f"model: digits MLP {hidden}; masked: {cfg['sparsity']:.0%} of weights removed; "
             f"shrunk: {kept}",
             f"time: median of {cfg['rounds']} interleaved rounds, torch.inference_mode()",
             ""]
    head = f"{'variant':<8}"
    for b in sizes:
        head += f"{f'ms @{b}':>10}{'x dense':>8}"
    head += f"{'bytes':>10}{'x dense':>8}{'zipped':>10}{'test acc':>9}"
    lines += [head, "-" * len(head)]
    dense = next(r for r in result["rows"] if r["variant"] == "dense")
    for row in result["rows"]:
        line = f"{row['variant']:<8}"
        for b in sizes:
            key = b if b in row["ms"] else str(b)  # JSON turns the keys into strings
            line += f"{row['ms'][key]:>10.3f}{row['ratio'][key]:>8.2f}"
        line += (f"{row['bytes']:>10d}{row['bytes'] / dense['bytes']:>8.2f}"
                 f"{row['zip_bytes']:>10d}{row['test_acc']:>9.1%}")
        lines.append(line)
    lines += ["", f"the masked model ({cfg['sparsity']:.0%} sparse) on disk, by format:",
              f"{'format':<8}{'bytes':>10}{'x dense':>8}{'zipped':>10}{'x dense':>8}"]
    base = result["storage"]["dense"]["bytes"]
    for fmt, sizes_ in result["storage"].items():
        lines.append(f"{fmt:<8}{sizes_['bytes']:>10d}{sizes_['bytes'] / base:>8.2f}"
                     f"{sizes_['zip_bytes']:>10d}{sizes_['zip_bytes'] / base:>8.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the structured benchmark
STRUCTURED_MODELS = ("resnet", "llama", "char")
"""The models of ``run_structured_benchmark`` (chapter 10's), in table order."""


def _structured_cases(names, channels: int, llama_width: int, seq_len: int, seed: int,
                      device) -> dict:
    """``{name: (description, dense model, example batch builder)}``; the builder takes a
    batch size and returns what the model takes."""
    from .data import char_corpus
    from .models import CharTransformerLM, DigitsResNet

    generator = torch.Generator().manual_seed(seed)
    cases = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            if name == "resnet":
                model = DigitsResNet(channels=channels)
                describe = (f"residual CNN (DigitsResNet, {channels} channels, 2 blocks), "
                            "half of every group's channels removed")
                make = (lambda b: torch.randn(b, 64, generator=generator))
            elif name == "char":
                vocab = len(char_corpus()[1])
                model = CharTransformerLM(vocab, d_model=64, n_heads=4, n_layers=2,
                                          max_len=seq_len)
                describe = (f"character transformer (CharTransformerLM, d_model 64, 2 layers,"
                            f" {seq_len} characters), half of the FFN neurons removed")
                make = (lambda b, v=vocab: torch.randint(0, v, (b, seq_len),
                                                         generator=generator))
            else:
                try:
                    import transformers
                except ImportError:
                    continue  # no transformers here: the LLaMA row is left out
                config = transformers.LlamaConfig(
                    vocab_size=256, hidden_size=llama_width, intermediate_size=4 * llama_width,
                    num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                    max_position_embeddings=max(seq_len, 16))
                model = transformers.LlamaForCausalLM(config)
                describe = (f"LLaMA from a config (hidden {llama_width}, FFN "
                            f"{4 * llama_width}, 4 layers, 8 query / 4 key-value heads, "
                            f"{seq_len} tokens), half of the FFN neurons removed")
                make = (lambda b: {"input_ids": torch.randint(0, 256, (b, seq_len),
                                                              generator=generator),
                                   "use_cache": False})
            cases[name] = (describe, model.to(device).eval(), make)
    return cases


def _to(inputs, device):
    if isinstance(inputs, dict):
        return {k: _to(v, device) for k, v in inputs.items()}
    return inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs


def _forward(model: nn.Module, inputs) -> None:
    with torch.inference_mode():
        model(**inputs) if isinstance(inputs, dict) else model(inputs)


def run_structured_benchmark(batch_sizes=(1, 64), models=STRUCTURED_MODELS,
                             channels: int = 64, llama_width: int = 128, seq_len: int = 32,
                             sparsity: float = 0.5, rounds: int = 20,
                             threads: int | None = 1, device=None, seed: int = 0) -> dict:
    """Dense vs shrunk for chapter 10's models: parameters, MACs and time per forward.

    Each model (``models``, a selection of ``STRUCTURED_MODELS``) is built with random
    weights; a copy gets ``sparsity`` of the units of every dependency group masked by group
    norm (``prune_units(..., example_inputs=...)``: the residual CNN's channels, the
    transformers' FFN neurons) and is cut out by ``shrink``. Both are timed in eval mode under
    ``torch.inference_mode()`` at every batch size, in interleaved rounds (``time_interleaved``,
    median over rounds) with ``threads`` threads. MACs are ``count_macs``'s, per example.

    Returns ``{"banner", "config", "rows"}``: one row per model and variant (``dense``,
    ``shrunk``) with ``description``, ``params``, ``macs``, ``ms`` (``{batch: ms per
    forward}``) and ``ratio`` (``{"params", "macs", batch: shrunk / dense}``; 1 for dense).
    The LLaMA row needs ``transformers``; without it that model is left out.

    >>> r = run_structured_benchmark(batch_sizes=(2,), models=("resnet",), channels=8,
    ...                              rounds=1, device="cpu")
    >>> [(row["variant"], row["params"] > 0) for row in r["rows"]]
    [('dense', True), ('shrunk', True)]
    """
    from .structured import count_macs, count_parameters, prune_units, shrink

    sizes = _batch_sizes(batch_sizes)
    models = _selection(models, STRUCTURED_MODELS, "models")
    channels = _positive_int(channels, "channels")
    llama_width = _positive_int(llama_width, "llama_width")
    if llama_width % 8:
        raise ValueError(f"llama_width must be a multiple of 8 (its 8 heads), got {llama_width}")
    seq_len = _positive_int(seq_len, "seq_len")
    sparsity = check_sparsity(sparsity)
    if sparsity == 1.0:
        raise ValueError("sparsity must be below 1 (a group without units computes nothing)")
    rounds = _positive_int(rounds, "rounds")
    threads = _threads(threads)
    device = _device(device)

    with _num_threads(threads):
        rows = []
        for name, (describe, dense, make) in _structured_cases(
                [m for m in STRUCTURED_MODELS if m in models], channels, llama_width,
                seq_len, seed, device).items():
            example = _to(make(2), device)
            masked = copy.deepcopy(dense)
            prune_units(masked, sparsity, example_inputs=example)
            shrunk = shrink(masked, example_inputs=example).eval()
            pair = {"dense": dense, "shrunk": shrunk}
            counts = {v: (count_parameters(m), count_macs(m, example)) for v, m in pair.items()}
            ms = {v: {} for v in pair}
            for batch in sizes:
                x = _to(make(batch), device)
                calls = {v: (lambda m=m: _forward(m, x)) for v, m in pair.items()}
                times = time_interleaved(calls, rounds=rounds,
                                         calls_per_round=max(1, 8 // batch), device=device)
                for v in pair:
                    ms[v][batch] = statistics.median(times[v]) * 1e3
            for v in pair:
                ratio = {"params": counts[v][0] / counts["dense"][0],
                         "macs": counts[v][1] / counts["dense"][1]}
                ratio.update({b: ms[v][b] / ms["dense"][b] for b in sizes})
                rows.append({"model": name, "variant": v, "description": describe,
                             "params": counts[v][0], "macs": counts[v][1], "ms": ms[v],
                             "ratio": ratio})
        info = banner(device)
    config = {"batch_sizes": list(sizes), "models": [m for m in STRUCTURED_MODELS
                                                     if m in models],
              "channels": channels, "llama_width": llama_width, "seq_len": seq_len,
              "sparsity": sparsity, "rounds": rounds, "threads": threads,
              "device": str(device), "seed": seed}
    return {"banner": info, "config": config, "rows": rows}


def format_structured_table(result: dict) -> str:
    """The result of ``run_structured_benchmark`` as text: per model, dense and shrunk with
    parameters, MACs and ms per forward at each batch size, each with its ratio to dense."""
    if not isinstance(result, dict) or "rows" not in result or "config" not in result \
            or "models" not in result["config"]:
        raise ValueError("result must be the dict that run_structured_benchmark returns")
    cfg = result["config"]
    sizes = cfg["batch_sizes"]
    lines = [result.get("banner", ""),
             f"time: median of {cfg['rounds']} interleaved rounds, torch.inference_mode(); "
             "MACs per example"]
    head = f"{'variant':<8}{'params':>11}{'x dense':>8}{'MACs':>13}{'x dense':>8}"
    for b in sizes:
        head += f"{f'ms @{b}':>10}{'x dense':>8}"
    for model in cfg["models"]:
        rows = [r for r in result["rows"] if r["model"] == model]
        if not rows:
            continue
        lines += ["", rows[0]["description"], head, "-" * len(head)]
        for row in rows:
            line = (f"{row['variant']:<8}{row['params']:>11,d}{row['ratio']['params']:>8.2f}"
                    f"{row['macs']:>13,d}{row['ratio']['macs']:>8.2f}")
            for b in sizes:
                key = b if b in row["ms"] else str(b)  # JSON turns the keys into strings
                line += f"{row['ms'][key]:>10.3f}{row['ratio'][key]:>8.2f}"
            lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskutils.bench",
        description="Median training-step time of dense vs. each way of enforcing a mask, "
                    "measured in interleaved rounds in one process; with --inference, "
                    "inference time, bytes on disk and accuracy of the wide digits MLP: "
                    "dense, masked, CSR and shrunk; with --structured, parameters, MACs and "
                    "inference time of chapter 10's models, dense and shrunk.")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--inference", action="store_true",
                      help="time inference (dense / masked / CSR / shrunk) instead of training")
    kind.add_argument("--structured", action="store_true",
                      help="dense vs shrunk (half of the units of every dependency group "
                           "removed): the residual CNN, a LLaMA config and the character "
                           "transformer")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="batch sizes to time (default: 32 256; with --inference 1 256; "
                        "with --structured 1 64)")
    p.add_argument("--width", type=int, default=1024, help="features of every Linear (1024)")
    p.add_argument("--layers", type=int, default=3, help="number of Linear layers (3)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds (20)")
    p.add_argument("--steps-per-round", type=int, default=5,
                   help="training steps per variant per round (5)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for the run (default 1)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, mps (default: maskutils.get_device(): cuda, then mps, then cpu)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction of each weight removed (default 0.9; with --inference "
                        "0.95 of all weights; with --structured 0.5 of the units of every "
                        "group)")
    p.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024], metavar="N",
                   help="--inference: hidden layer sizes of the digits MLP (1024 1024)")
    p.add_argument("--units-kept", type=float, default=0.25,
                   help="--inference: fraction of hidden units the shrunk model keeps (0.25)")
    p.add_argument("--epochs", type=int, default=10,
                   help="--inference: epochs of dense training (10)")
    p.add_argument("--finetune-epochs", type=int, default=10,
                   help="--inference: epochs of pruning / fine-tuning (10)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help=f"subset of {' '.join(VARIANTS)} (dense is always included)")
    p.add_argument("--models", nargs="+", default=list(STRUCTURED_MODELS), metavar="NAME",
                   help=f"--structured: subset of {' '.join(STRUCTURED_MODELS)}")
    p.add_argument("--channels", type=int, default=64,
                   help="--structured: channels of the residual CNN (64)")
    p.add_argument("--llama-width", type=int, default=128,
                   help="--structured: hidden size of the LLaMA config (128; FFN 4x)")
    p.add_argument("--seq-len", type=int, default=32,
                   help="--structured: tokens per sequence of the transformers (32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and the data (0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m maskutils.bench``; bad options exit with status 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.structured:
            result = run_structured_benchmark(
                batch_sizes=args.batch_sizes or [1, 64], models=args.models,
                channels=args.channels, llama_width=args.llama_width, seq_len=args.seq_len,
                sparsity=0.5 if args.sparsity is None else args.sparsity,
                rounds=args.rounds, threads=args.threads, device=args.device,
                seed=args.seed)
        elif args.inference:
            result = run_inference_benchmark(
                batch_sizes=args.batch_sizes or [1, 256], hidden=args.hidden,
                sparsity=0.95 if args.sparsity is None else args.sparsity,
                units_kept=args.units_kept, epochs=args.epochs,
                finetune_epochs=args.finetune_epochs, rounds=args.rounds,
                threads=args.threads, device=args.device, seed=args.seed)
        else:
            result = run_benchmark(batch_sizes=args.batch_sizes or [32, 256],
                                   width=args.width, layers=args.layers, rounds=args.rounds,
                                   steps_per_round=args.steps_per_round,
                                   threads=args.threads, device=args.device,
                                   sparsity=0.9 if args.sparsity is None else args.sparsity,
                                   variants=args.variants, seed=args.seed)
    except (ValueError, TypeError) as err:
        parser.error(str(err))  # prints usage + the message, exits with status 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_structured_table(result) if args.structured
              else format_inference_table(result) if args.inference else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
