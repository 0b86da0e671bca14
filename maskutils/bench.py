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

Command line (``--help`` lists the options)::

    python -m maskutils.bench                      # 3 x Linear(1024), batch 32 and 256
    python -m maskutils.bench --batch-sizes 64 --json
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
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


def _variants(values) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    unknown = [v for v in values if v not in VARIANTS]
    if unknown or not values:
        raise ValueError(f"variants must be a non-empty selection of {list(VARIANTS)}, "
                         f"got {list(values)}")
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
    if threads is not None:
        threads = _positive_int(threads, "threads")
    device = _device(device)
    sparsity = check_sparsity(sparsity)
    if sparsity == 1.0:
        raise ValueError("sparsity must be below 1 (a mask keeping nothing trains nothing)")
    chosen = _variants(variants)

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
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
    finally:
        torch.set_num_threads(old_threads)
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

    ``X`` is ``size`` x ``batch``. All products of all levels are timed together in
    interleaved rounds, and each value is the *fastest* round's time per product (the one
    least disturbed by other load on the machine). Returns ``{"sparsity", "dense_s", "csr_s",
    "rows_s"}`` (lists of seconds per product, one per sparsity) and ``"max_error"``: the
    largest difference between the CSR and the dense result, relative to the largest entry
    of the dense result.

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
    calls, max_error = {}, 0.0
    for i, level in enumerate(levels):
        weight = torch.randn(size, size, generator=generator)
        mask = torch.ones(size * size)
        mask[torch.randperm(size * size, generator=generator)[:round(level * size * size)]] = 0
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


# ---------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskutils.bench",
        description="Median training-step time of dense vs. each way of enforcing a mask, "
                    "measured in interleaved rounds in one process.")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256], metavar="N",
                   help="batch sizes to time (default: 32 256)")
    p.add_argument("--width", type=int, default=1024, help="features of every Linear (1024)")
    p.add_argument("--layers", type=int, default=3, help="number of Linear layers (3)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds (20)")
    p.add_argument("--steps-per-round", type=int, default=5,
                   help="training steps per variant per round (5)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for the run (default 1)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, mps (default: maskutils.get_device(): cuda, then mps, then cpu)")
    p.add_argument("--sparsity", type=float, default=0.9,
                   help="fraction of each weight removed (default 0.9)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help=f"subset of {' '.join(VARIANTS)} (dense is always included)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and the data (0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m maskutils.bench``; bad options exit with status 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result = run_benchmark(batch_sizes=args.batch_sizes, width=args.width,
                               layers=args.layers, rounds=args.rounds,
                               steps_per_round=args.steps_per_round, threads=args.threads,
                               device=args.device, sparsity=args.sparsity,
                               variants=args.variants, seed=args.seed)
    except (ValueError, TypeError) as err:
        parser.error(str(err))  # prints usage + the message, exits with status 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
