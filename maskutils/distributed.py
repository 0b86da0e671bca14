"""Masks under ``torch.distributed``: launching local processes, and keeping masks in step.

``DistributedDataParallel`` (DDP) keeps the *parameters* of every rank equal: it broadcasts
rank 0's parameters and buffers when it wraps the model, then averages gradients at every
step. A mask made by ``apply_mask`` is a buffer, so it rides along with that first broadcast,
but only if it exists before wrapping. Mask before wrapping, and when masks change later,
shrink the existing masks in place (``apply_mask`` on an already masked layer does that) and
check them with ``masks_agree``.

- ``launch(fn, world_size=2, args=())`` runs ``fn(rank, world_size, *args)`` on local
  processes (gloo on CPU; nccl when there is a GPU per rank) and returns each rank's result.
- ``broadcast_masks(model, src=0)`` makes every rank's masks equal rank ``src``'s.
- ``masks_agree(model)`` is True on every rank when all ranks hold the same masks.

The worker functions at the end of this module are the experiments of chapter 9: spawned
processes can only run functions they can import, so they live here, not in the notebook.

>>> from maskutils.distributed import launch, example_worker
>>> launch(example_worker, world_size=2)
[True, True]
"""
from __future__ import annotations

import contextlib
import inspect
import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .apply import apply_mask, get_mask, mask_layers, masked_parameters, remove_mask
from .masks import magnitude_mask, random_mask
from .storage import plain_state  # noqa: F401  (chapter 9 imports it from here)

__all__ = ["RankError", "backend_for", "broadcast_masks", "launch", "masks_agree",
           "warm_up", "wrap_ddp"]


# ----------------------------------------------------------------------------- launching


class RankError(RuntimeError):
    """A rank of ``launch`` raised. ``rank``, ``type_name``, ``message`` and the remote
    ``remote_traceback`` say where and what; the original exception, when it could be
    rebuilt, is raised with this one as its cause."""

    def __init__(self, rank: int, type_name: str, message: str, remote_traceback: str = ""):
        super().__init__(f"rank {rank} raised {type_name}: {message}")
        self.rank, self.type_name, self.message = rank, type_name, message
        self.remote_traceback = remote_traceback


def backend_for(world_size: int) -> str:
    """The backend ``launch`` uses: ``"nccl"`` when CUDA has a GPU for every rank, else ``"gloo"``.

    >>> backend_for(1) in {"gloo", "nccl"}
    True
    """
    _check_world_size(world_size)
    if torch.cuda.is_available() and torch.cuda.device_count() >= world_size \
            and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def _check_world_size(world_size) -> int:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    return world_size


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _threads_per_rank(world_size: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // world_size)


def _start_method(wanted: str | None) -> str:
    """``forkserver`` on Linux (its server imports torch once, so every launch
    after the first starts in a fraction of a second), else ``spawn``; or what was asked."""
    import multiprocessing

    available = multiprocessing.get_all_start_methods()
    if wanted is None:
        # Forking a process that has imported torch is safe on Linux; macOS frameworks are
        # not fork-safe (Python itself defaults to spawn there), nor is there fork on Windows.
        linux = sys.platform.startswith("linux")
        wanted = "forkserver" if linux and "forkserver" in available else "spawn"
    if wanted not in ("spawn", "forkserver") or wanted not in available:
        choices = [m for m in ("spawn", "forkserver") if m in available]
        raise ValueError(f"start_method must be one of {choices} (or None), got {wanted!r}")
    if wanted == "forkserver":
        # DDP's constructor imports torch._dynamo: seconds per process, paid once here.
        multiprocessing.set_forkserver_preload(["torch", "torch._dynamo", __name__])
    return wanted


def warm_up(start_method: str | None = None) -> str:
    """Start the process server now, so that the first ``launch`` does not wait for it.

    With ``forkserver`` (the default on Linux) the server imports torch once, in the
    background, while the caller goes on; every ``launch`` then forks from it. Returns the
    start method. Optional: ``launch`` starts the server itself when needed.

    >>> warm_up() in {"forkserver", "spawn"}
    True
    """
    method = _start_method(start_method)
    if method == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
    return method


def _run_rank(rank, fn, world_size, args, backend, port, folder):
    """What each spawned process runs: join the group, call ``fn``, save its result or error."""
    out = Path(folder)
    # The processes' own messages (gloo's, warnings) go to a file, not into a notebook;
    # stdout too, where some torch releases' gloo reports its connections.
    log = open(out / f"output{rank}.txt", "w")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(_threads_per_rank(world_size))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        torch.save(result, out / f"result{rank}.pt")
    except BaseException as error:
        record = {"type": type(error).__name__, "message": str(error),
                  "traceback": traceback.format_exc(), "time": time.time()}
        try:
            record["error"] = pickle.dumps(error)
        except Exception:  # some exceptions cannot be pickled; the text is enough
            pass
        with open(out / f"error{rank}.pkl", "wb") as f:
            pickle.dump(record, f)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _rank_error(folder: Path, world_size: int):
    """``(RankError, original exception or None)`` of the rank that failed first, or None.

    When one rank raises, the others fail too (their peer is gone); the first error in
    time is the cause, so that is the one reported.
    """
    records = []
    for rank in range(world_size):
        path = folder / f"error{rank}.pkl"
        if path.exists():
            records.append((pickle.loads(path.read_bytes()), rank))
    if not records:
        return None
    record, rank = min(records, key=lambda found: (found[0]["time"], found[1]))
    summary = RankError(rank, record["type"], record["message"], record["traceback"])
    try:
        original = pickle.loads(record["error"])
    except Exception:
        return summary, None
    if isinstance(original, Exception) and type(original).__name__ == record["type"]:
        return summary, original
    return summary, None


def launch(fn, world_size: int = 2, args=(), timeout: float = 300.0,
           start_method: str | None = None) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` local processes; return their results.

    Each process joins one ``torch.distributed`` process group (``backend_for(world_size)``:
    nccl with a GPU per rank, else gloo on the CPU; address 127.0.0.1 and a free port), so
    ``fn`` can wrap a model in ``DistributedDataParallel`` right away. The result is the list of
    the ranks' return values in rank order (they travel through ``torch.save``: tensors, dicts,
    lists and numbers all do). When a rank raises, ``launch`` raises that rank's exception
    (same type and message, with a ``RankError`` naming the rank and holding its traceback as
    the cause; a ``RankError`` alone when the exception cannot be rebuilt) and stops the others.

    ``fn`` must be importable by a fresh process: a function defined at the top level of a
    module, not in a notebook or ``__main__``, not a lambda. The processes' output (gloo's
    messages, warnings, prints) is kept out of the caller's.

    ``start_method=None`` forks the processes from a fork server on Linux (a process that
    imported torch once: the first launch waits for that import, later ones do not; the
    server does not see modules edited after it started) and spawns fresh interpreters
    elsewhere; ``"spawn"`` or ``"forkserver"`` chooses. ``timeout`` (seconds) stops them all.

    >>> from maskutils.distributed import example_worker
    >>> launch(example_worker, world_size=2)
    [True, True]
    """
    if not callable(fn):
        raise TypeError(f"fn must be a function fn(rank, world_size, *args), got {fn!r}")
    _check_world_size(world_size)
    if not isinstance(args, (tuple, list)):
        raise TypeError("args must be a tuple of extra arguments for fn, "
                        f"got {type(args).__name__}")
    module = getattr(fn, "__module__", None)
    # A script's __main__ is re-imported by the processes; a notebook's or a shell's is not.
    interactive = module == "__main__" and not hasattr(sys.modules["__main__"], "__file__")
    if module is None or interactive or "<locals>" in getattr(fn, "__qualname__", "<locals>") \
            or getattr(fn, "__name__", "") == "<lambda>":
        raise ValueError(
            f"fn={getattr(fn, '__qualname__', fn)!r} cannot be imported by the spawned processes "
            f"(module {module!r}); define it at the top level of a module (a .py file) and "
            "import it, e.g. the workers in maskutils.distributed")
    try:
        pickle.dumps((fn, tuple(args)))
    except Exception as error:
        raise TypeError(f"fn and args must be picklable to reach the processes: {error}") \
            from error
    import torch.multiprocessing as mp

    backend = backend_for(world_size)
    method = _start_method(start_method)
    with tempfile.TemporaryDirectory(prefix="maskutils-launch-") as tmp:
        folder = Path(tmp)
        context = mp.start_processes(
            _run_rank, args=(fn, world_size, tuple(args), backend, _free_port(), tmp),
            nprocs=world_size, join=False, start_method=method)
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"launch: the {world_size} processes did not finish "
                                       f"within {timeout} s")
        except Exception as error:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            found = _rank_error(folder, world_size)
            if found is None:
                raise
            summary, original = found
            if original is None:
                raise summary from None
            raise original from summary
        return [torch.load(folder / f"result{rank}.pt", map_location="cpu", weights_only=False)
                for rank in range(world_size)]


# ----------------------------------------------------------------------------- masks


def _mask_buffers(model: nn.Module) -> list[torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return list(masked_parameters(model).values())


def _require_group(what: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{what} needs a torch.distributed process group; call it inside "
                           "a function run by maskutils.distributed.launch (or after "
                           "torch.distributed.init_process_group)")


def _same_layout(masks: list[torch.Tensor]) -> bool:
    """Whether every rank has the same number of masks with the same shapes (a collective)."""
    layouts = [None] * dist.get_world_size()
    dist.all_gather_object(layouts, [tuple(m.shape) for m in masks])
    return all(layout == layouts[0] for layout in layouts)


def _flat(masks: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.detach().flatten().float() for m in masks]) if masks \
        else torch.zeros(0)


def masks_agree(model: nn.Module) -> bool:
    """True on every rank when every rank holds the same masks (same layers, shapes, values).

    A collective: every rank must call it. Cheap: it compares the masks through two
    ``all_reduce`` calls of their values (minimum and maximum agree only when all are equal).

    >>> from maskutils.distributed import launch, example_worker
    >>> launch(example_worker, world_size=2)   # calls masks_agree on each rank
    [True, True]
    """
    _require_group("masks_agree")
    masks = _mask_buffers(getattr(model, "module", model))
    if not _same_layout(masks):
        return False
    flat = _flat(masks)
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    same = torch.tensor([float(torch.equal(low, high))], device=flat.device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())


def broadcast_masks(model: nn.Module, src: int = 0) -> nn.Module:
    """Make every rank's masks equal rank ``src``'s, in place; return ``model``.

    A collective: every rank must call it, with the same model architecture masked on the
    same layers (checked first; a clear ``ValueError`` otherwise, and no mask changes). The
    mask tensors are overwritten in place, so a ``DistributedDataParallel`` wrapper built
    before keeps working. Masked entries of the effective weights follow at once, since they
    are computed from the masks on every access.

    >>> from maskutils.distributed import launch, example_worker
    >>> launch(example_worker, world_size=2)   # draws per-rank masks, then broadcasts
    [True, True]
    """
    _require_group("broadcast_masks")
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < dist.get_world_size():
        raise ValueError(f"src must be a rank in [0, {dist.get_world_size()}), got {src!r}")
    masks = _mask_buffers(getattr(model, "module", model))
    if not _same_layout(masks):
        raise ValueError("the ranks' models are not masked on the same layers with the same "
                         "shapes; apply the same masking (e.g. mask_layers) on every rank "
                         "before broadcast_masks")
    with torch.no_grad():
        for mask in masks:
            dist.broadcast(mask, src=src)
    return model


# ----------------------------------------------------------------------------- DDP


def _ddp_accepts_forward_sync() -> bool:
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return "forward_sync_buffers" in params


def wrap_ddp(model: nn.Module, sync_buffers: bool = True, sync_buffers_at_init: bool = True,
             **kwargs) -> nn.parallel.DistributedDataParallel:
    """``DistributedDataParallel(model)`` with buffer syncing spelled out, on any torch >= 2.9.

    ``sync_buffers`` broadcasts rank 0's buffers (masks included) before every forward;
    ``sync_buffers_at_init`` broadcasts them once when wrapping. torch 2.13 deprecates
    ``broadcast_buffers`` for ``forward_sync_buffers``, which always syncs at init; turning
    the init sync off there needs the deprecated argument, whose ``FutureWarning`` is
    silenced here because asking for it is the point. Extra ``kwargs`` go to DDP
    (``device_ids`` is set for you on CUDA).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    _require_group("wrap_ddp")
    if dist.get_backend() == "nccl" and "device_ids" not in kwargs:
        kwargs["device_ids"] = [torch.cuda.current_device()]
    DDP = nn.parallel.DistributedDataParallel
    if not _ddp_accepts_forward_sync():
        if sync_buffers != sync_buffers_at_init:
            raise ValueError("this torch syncs buffers at init exactly when it syncs them "
                             "before forward; pass the same value for both")
        return DDP(model, broadcast_buffers=sync_buffers, **kwargs)
    if sync_buffers_at_init:
        return DDP(model, forward_sync_buffers=sync_buffers, **kwargs)
    if sync_buffers:
        raise ValueError("syncing buffers before forward but not at init is not a DDP option")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DDP(model, broadcast_buffers=False, **kwargs)


def rank_device(rank: int) -> torch.device:
    """The device of ``rank`` in a ``launch``: its GPU under nccl, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", rank)
    return torch.device("cpu")


# ----------------------------------------------------------------------------- chapter 9


def example_worker(rank: int, world_size: int) -> bool:
    """A worker for the doctests: per-rank masks disagree, ``broadcast_masks`` fixes them."""
    torch.manual_seed(rank)  # a different mask on every rank
    layer = apply_mask(nn.Linear(8, 4), random_mask(torch.ones(4, 8), 0.5))
    apart = masks_agree(layer)
    broadcast_masks(layer)
    return (not apart or world_size == 1) and masks_agree(layer)



def shard(batch, rank: int, world_size: int):
    """Rank ``rank``'s contiguous share of every tensor in ``batch`` (split along dim 0).

    With equal shares, DDP's average of the ranks' mean-loss gradients is the gradient of the
    mean loss over the whole batch, so N ranks train exactly like one process on it.

    >>> x = torch.arange(8)
    >>> shard((x, x), 1, 2)[0].tolist()
    [4, 5, 6, 7]
    """
    return tuple(t.chunk(world_size)[rank] for t in batch)


def train_steps(model: nn.Module, batches, optimizer: torch.optim.Optimizer, rank: int = 0,
                world_size: int = 1, on_step=None, losses: list | None = None) -> list[float]:
    """One optimizer step of cross-entropy per batch, on this rank's ``shard`` of it.

    ``model`` may be a DDP wrapper or a plain model; ``on_step(step, model)`` runs after each
    step (step counts from 1); ``losses``, a list, receives this rank's loss of each step.
    Returns the seconds each step took.

    >>> model = nn.Linear(4, 3)
    >>> batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))] * 2
    >>> len(train_steps(model, batches, torch.optim.SGD(model.parameters(), 0.1)))
    2
    """
    device = next(model.parameters()).device
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    for step, batch in enumerate(batches, 1):
        x, y = (t.to(device) for t in shard(batch, rank, world_size))
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
        if losses is not None:
            losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, model)
    return seconds


def _masked_copy(state: dict, masks: list) -> nn.Module:
    from .models import digits_mlp

    model = digits_mlp()
    model.load_state_dict(state)
    for layer, mask in zip(model.linears(), masks):
        apply_mask(layer, mask)
    return model


def _masked_max(model: nn.Module) -> float:
    """The largest |effective weight| at a masked entry (0.0 when the masks hold)."""
    model = getattr(model, "module", model)
    worst = 0.0
    for layer in model.modules():
        mask = get_mask(layer) if isinstance(layer, nn.Linear) else None
        if mask is not None:
            worst = max(worst, float(layer.weight.detach()[mask == 0].abs().max()))
    return worst


def train_worker(rank: int, world_size: int, state: dict, masks: list,
                 batches: list, lr: float = 1e-3) -> dict:
    """Chapter 9: train the masked digits MLP with DDP on this rank's share
    of each batch. Masks go on before wrapping. Returns the backend, whether
    the masks agree across ranks, the largest masked effective weight, the
    plain state dict, and the loss and seconds of each step."""
    device = rank_device(rank)
    model = _masked_copy(state, masks).to(device)  # masks before wrapping
    ddp = wrap_ddp(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=lr)
    losses = []
    seconds = train_steps(ddp, batches, optimizer, rank, world_size,
                          losses=losses)
    return {"backend": dist.get_backend(), "agree": masks_agree(ddp),
            "masked_max": _masked_max(ddp), "state": plain_state(ddp),
            "losses": losses, "seconds": seconds}


@contextlib.contextmanager
def _counted_broadcasts():
    """Count what DDP hands to ``dist._broadcast_coalesced``, the call that syncs its buffers
    (and, at wrapping, its parameters): calls, bytes and seconds, on this rank."""
    record = {"calls": 0, "bytes": 0, "seconds": 0.0}
    real = dist._broadcast_coalesced

    def counted(group, tensors, *args, **kwargs):
        start = time.perf_counter()
        result = real(group, tensors, *args, **kwargs)
        record["seconds"] += time.perf_counter() - start
        record["calls"] += 1
        record["bytes"] += _nbytes(tensors)
        return result

    dist._broadcast_coalesced = counted
    try:
        yield record
    finally:
        dist._broadcast_coalesced = real


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def buffer_sync_worker(rank: int, world_size: int, state: dict, masks: list,
                       batches: list, lr: float = 1e-3) -> dict:
    """Chapter 9: what DDP's default buffer sync sends while training, against
    ``broadcast_masks`` once and the sync off. For each way, returns the bytes,
    calls and seconds DDP spent broadcasting during training, the bytes the
    masks hold and the gradients DDP averages per step, the seconds of each
    step, whether the masks agree, and the plain state dict."""
    device = rank_device(rank)
    report = {}
    for label in ("default", "broadcast_masks, sync off"):
        model = _masked_copy(state, masks).to(device)
        mask_bytes = _nbytes(masked_parameters(model).values())
        if label == "default":
            ddp, sent_before = wrap_ddp(model), 0
        else:
            sent_before = mask_bytes  # broadcast_masks sends each mask once
            ddp = wrap_ddp(broadcast_masks(model), sync_buffers=False,
                           sync_buffers_at_init=False)
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=lr)
        with _counted_broadcasts() as sent:
            seconds = train_steps(ddp, batches, optimizer, rank, world_size)
        report[label] = {
            "bytes": sent["bytes"], "calls": sent["calls"],
            "broadcast_seconds": sent["seconds"], "seconds": seconds,
            "before_training": sent_before, "mask_bytes": mask_bytes,
            "grad_bytes": _nbytes(p for p in ddp.parameters() if p.requires_grad),
            "agree": masks_agree(ddp), "state": plain_state(ddp)}
    return report


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _spread(flat: torch.Tensor) -> float:
    """max |this rank's ``flat`` - rank 0's|, over all ranks (the same on every rank)."""
    flat = flat.detach().flatten().float()
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    first = flat.clone()
    dist.broadcast(first, src=0)
    spread = (flat - first).abs().max().reshape(1)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread)


def _rank_spread(model: nn.Module) -> float:
    """How far the ranks' stored parameters are apart (0.0 when DDP keeps them equal)."""
    return _spread(torch.cat([p.detach().flatten()
                              for p in getattr(model, "module", model).parameters()]))


def _visible_state(model: nn.Module) -> list[str]:
    """What Python can see on a model and its parameters: attributes and hooks, as strings."""
    seen = []
    for name, module in model.named_modules():
        seen += [f"module {name!r}: attribute {a}" for a in vars(module)]
        for kind in ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks",
                     "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            seen += [f"module {name!r}: {kind} {k}" for k in getattr(module, kind, {})]
    for name, param in model.named_parameters():
        seen += [f"parameter {name!r}: attribute {a}" for a in vars(param)]
        for kind in ("_backward_hooks", "_post_accumulate_grad_hooks"):
            seen += [f"parameter {name!r}: {kind} {k}" for k in (getattr(param, kind) or {})]
    return seen


def mask_after_wrapping_worker(rank: int, world_size: int, state: dict, batches: list,
                               find_unused_parameters: bool = False) -> dict:
    """Chapter 9, pitfall 1: mask (and unmask) a model that DDP already wraps.

    Returns what each step did (``"ok"`` or the error), after each step how far the ranks'
    parameters are apart, and under ``"marks"`` what wrapping added to the model or its
    parameters that Python can see (attributes, hooks): what a check could look for.
    """
    from .models import digits_mlp

    device = rank_device(rank)
    report = {}
    model = digits_mlp().to(device)
    model.load_state_dict(state)
    before = _visible_state(model)
    ddp = wrap_ddp(model, find_unused_parameters=find_unused_parameters)
    report["marks"] = sorted(set(_visible_state(model)) - set(before))
    try:
        mask_layers(ddp, 0.8)
        report["on the wrapper"] = "ok"
    except ValueError as error:
        report["on the wrapper"] = _error_text(error)
    steps, spreads = [], []
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    for step, batch in enumerate(batches[:4], 1):
        if step == 2:
            mask_layers(ddp.module, 0.8)  # DDP's inner model: not detectable
        try:
            train_steps(ddp, [batch], optimizer, rank, world_size)
            steps.append("ok")
        except RuntimeError as error:
            steps.append(_error_text(error))
        spreads.append(_rank_spread(ddp))
    report["mask_layers(ddp.module)"], report["spread"] = steps, spreads
    model = _masked_copy(state, [torch.ones_like(l.weight) for l in model.linears()])
    ddp = wrap_ddp(model.to(device))
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    steps = []
    for step, batch in enumerate(batches[:2], 1):
        if step == 2:
            for layer in ddp.module.linears():
                remove_mask(layer, bake=True)
        try:
            train_steps(ddp, [batch], optimizer, rank, world_size)
            steps.append("ok")
        except RuntimeError as error:
            steps.append(_error_text(error))
    report["remove_mask(ddp.module...)"] = steps
    return report


def per_rank_masks_worker(rank: int, world_size: int, state: dict, batches: list,
                          sparsity: float = 0.5) -> dict:
    """Chapter 9, pitfall 2: each rank draws its own random masks (seeded by its rank).

    For each way of wrapping (DDP's default, ``forward_sync_buffers=False``, the deprecated
    ``broadcast_buffers=False``, and the latter after ``broadcast_masks``) returns whether the
    masks agree after wrapping, the middle layer's mask, how far the ranks' stored parameters
    and effective weights are apart after training, the warnings DDP gave, and the plain
    state dict of the trained model.
    """
    device = rank_device(rank)
    torch.manual_seed(1000 + rank)  # the mistake: a different random mask on every rank
    masks = [random_mask(w, sparsity) for k, w in state.items() if k.endswith("weight")]
    DDP = nn.parallel.DistributedDataParallel
    settings = {"default": {}, "forward_sync_buffers=False": {"forward_sync_buffers": False},
                "broadcast_buffers=False": {"broadcast_buffers": False},
                "broadcast_masks, then broadcast_buffers=False": {"broadcast_buffers": False}}
    if not _ddp_accepts_forward_sync():
        settings.pop("forward_sync_buffers=False")
    report = {}
    for label, kwargs in settings.items():
        model = _masked_copy(state, masks).to(device)
        if label.startswith("broadcast_masks"):
            broadcast_masks(model)
        if dist.get_backend() == "nccl":
            kwargs = {**kwargs, "device_ids": [rank]}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ddp = DDP(model, **kwargs)
        agree = masks_agree(ddp)
        middle = get_mask(model.linears()[1]).detach().cpu().clone()
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        train_steps(ddp, batches, optimizer, rank, world_size)
        plain = plain_state(ddp)
        effective = torch.cat([v.flatten() for v in plain.values()])
        report[label] = {
            "agree": agree, "middle_mask": middle,
            "spread_stored": _rank_spread(ddp), "spread_effective": _spread(effective),
            "warnings": [str(w.message) for w in caught], "state": plain,
        }
    return report


def gradual_pruning_worker(rank: int, world_size: int, state: dict, batches: list,
                           schedule: dict) -> dict:
    """Chapter 9, pitfall 3 done right: every layer masked (all ones) before wrapping; at the
    steps of ``schedule`` ({step: sparsity}) each mask shrinks in place to a magnitude mask of
    the effective weight. Returns, per pruning step, whether the masks agreed and the
    sparsity, then the largest masked weight and the plain state dict.
    """
    from .models import digits_mlp

    device = rank_device(rank)
    ones = [torch.ones_like(v) for k, v in state.items() if k.endswith("weight")]
    ddp = wrap_ddp(_masked_copy(state, ones).to(device))
    history = []

    def prune(step, wrapped):
        if step in schedule:
            shrink_masks(wrapped.module, schedule[step])
            history.append((step, masks_agree(wrapped), _sparsity(wrapped.module)))

    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    train_steps(ddp, batches, optimizer, rank, world_size, on_step=prune)
    return {"history": history, "masked_max": _masked_max(ddp), "state": plain_state(ddp)}


def shrink_masks(model: nn.Module, sparsity: float) -> nn.Module:
    """Shrink every existing mask of ``model`` in place to remove ``sparsity`` of its layer.

    The new mask is a magnitude mask of the effective weight, intersected with the old one,
    so the same mask tensors (the ones DDP registered) change: safe under DDP, and identical
    on every rank, because DDP keeps the weights identical. Layers without a mask are left
    alone; mask them (all ones is fine) before wrapping.

    >>> from maskutils import apply_mask
    >>> layer = apply_mask(nn.Linear(4, 2), torch.ones(2, 4))
    >>> mask = get_mask(layer)
    >>> _ = shrink_masks(layer, 0.5)
    >>> get_mask(layer) is mask, float(mask.mean())
    (True, 0.5)
    """
    for layer in getattr(model, "module", model).modules():
        mask = get_mask(layer) if isinstance(layer, nn.Linear) else None
        if mask is not None:
            apply_mask(layer, magnitude_mask(layer.weight.detach(), sparsity))
    return model


def _sparsity(model: nn.Module) -> float:
    masks = list(masked_parameters(model).values())
    return float(sum(int((m == 0).sum()) for m in masks) / sum(m.numel() for m in masks))


def fsdp_worker(rank: int, world_size: int, state: dict, masks: list, batches: list,
                lr: float = 1e-3) -> dict:
    """Chapter 9: the same masked training with FSDP2 (``fully_shard`` on each Linear and on
    the whole model), masks applied before sharding. Returns what worked, the shapes of this
    rank's shard of the first layer and of its mask, the largest masked weight, the plain
    state dict and, if ``get_mask`` fails on a sharded layer, its error.
    """
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as error:
        return {"error": _error_text(error)}
    device = rank_device(rank)
    model = _masked_copy(state, masks).to(device)
    report = {}
    try:
        for layer in model.linears():
            fully_shard(layer)
        fully_shard(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        train_steps(model, batches, optimizer, rank, world_size)
    except Exception as error:
        return {"error": _error_text(error)}
    first = model.linears()[0]
    original = first.parametrizations.weight.original
    report.update(shard_type=type(original).__name__,
                  shard_shape=tuple(original.to_local().shape),
                  full_shape=tuple(original.shape),
                  mask_shape=tuple(first.parametrizations.weight[0].mask.shape))
    try:
        get_mask(first)
        report["get_mask"] = "ok"
    except RuntimeError as error:
        report["get_mask"] = _error_text(error)
    report["state"] = plain_state(model)
    weights = [report["state"][f"layers.{i}.weight"] for i in (0, 2, 4)]
    report["masked_max"] = max(float(w[m.cpu() == 0].abs().max()) for w, m in zip(weights, masks))
    return report
