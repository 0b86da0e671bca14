"""Applying a fixed mask to a parameter with ``torch.nn.utils.parametrize``.

After ``apply_mask`` every access to ``module.weight`` computes ``original * mask``: the
original where the mask is 1 and exactly 0 where it is 0 (even where the original holds ``inf``
or NaN, which a product would turn into NaN), so autograd gives the masked entries zero
gradient. The mask is a buffer (saved in ``state_dict``, moved by ``.to()``) and the original
``Parameter`` object is kept, so an optimizer built before still trains it.

``module.weight`` is computed on every access, so writing into it in place would change a
temporary copy and leave the layer as it was. Outside a forward pass it is therefore returned
as a ``ComputedWeight``, a tensor that computes like any other but refuses in-place writes
(``nn.init.normal_(layer.weight)``, ``layer.reset_parameters()``, ``layer.weight.data.zero_()``,
``layer.weight[0] = 1``) with an error that names the stored original,
``layer.parametrizations.weight.original``, the tensor to write into instead.

``mask_layers(model, sparsity)`` masks every weight matrix or kernel of a model (every
parameter with at least two dimensions, whatever the module: Linear, Conv, attention,
recurrent, ``transformers``' ``Conv1D``), all or nothing, and says what it masked and what it
left out. A parameter shared by several modules (an embedding tied to an output head) is masked
once, with one mask that every place sees.

>>> import torch
>>> from torch import nn
>>> from maskutils import apply_mask, get_mask, remove_mask
>>> layer = nn.Linear(4, 2)
>>> _ = apply_mask(layer, torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]]))
>>> bool((layer.weight == layer.parametrizations.weight.original * get_mask(layer)).all())
True
>>> _ = remove_mask(layer)            # bake=True: a plain parameter holding the masked values
>>> float((layer.weight == 0).float().mean())
0.5
"""
from __future__ import annotations

import fnmatch
import math
import sys
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize


# --- the weight a parametrization computes: exact zeros, and no silent in-place writes --------

_PARAMETRIZE_FILE = parametrize.__file__
_INPLACE_OPERATORS = frozenset(f"__i{op}__" for op in (
    "add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor",
    "lshift", "rshift"))
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_", "retain_grad"})
_WRITES: dict = {}  # torch function -> does it write into its first argument


def _writes(func, kwargs) -> bool:
    """Does ``func`` write into its first argument (``zero_``, ``copy_``, ``[...] =``, ...)?"""
    if kwargs.get("inplace") is True:
        return True
    try:
        return _WRITES[func]
    except (KeyError, TypeError):
        pass
    name = getattr(func, "__name__", "")
    writes = (name in ("__setitem__", "__set__") or name in _INPLACE_OPERATORS
              or (name.endswith("_") and not name.endswith("__") and name not in _NOT_WRITES))
    try:
        _WRITES[func] = writes
    except TypeError:
        pass
    return writes


class _ComputedWeightType(type(torch.Tensor)):
    """``isinstance(parameter, ComputedWeight)`` is True, so that ``torch.testing.assert_close``
    compares a computed weight with a ``Parameter`` as it compares a plain tensor with one
    (it requires one input to be an instance of the other's type). Code in this module tests
    ``type(x) is ComputedWeight``."""

    def __instancecheck__(cls, instance):
        return type.__instancecheck__(cls, instance) or isinstance(instance, nn.Parameter)


class ComputedWeight(torch.Tensor, metaclass=_ComputedWeightType):
    """A tensor computed by a mask (``layer.weight`` read outside a forward pass).

    It computes like any tensor (every result is a plain ``torch.Tensor``), but an in-place
    write into it, or into a view of it, raises an error: the write would change this temporary
    copy and leave the layer as it was. Write into the stored original instead
    (``layer.parametrizations.weight.original``), or assign ``layer.weight = values``.

    >>> layer = apply_mask(nn.Linear(2, 2), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    >>> nn.init.zeros_(layer.weight)
    Traceback (most recent call last):
    ...
    RuntimeError: layer.weight of this masked Linear is computed ...nn.init.normal_(layer.parametrizations.weight.original)...
    >>> with torch.no_grad():
    ...     _ = nn.init.zeros_(layer.parametrizations.weight.original)
    >>> layer.weight.abs().sum().item()
    0.0
    """

    _maskutils_what = ("weight", "original * mask", "masked layer")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else next(iter(kwargs.values()), None)
        written = kwargs.get("out")
        if type(target) is ComputedWeight and _writes(func, kwargs):
            written = target
        if type(written) is ComputedWeight:
            raise RuntimeError(_in_place_message(written, func))
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        if type(target) is ComputedWeight:
            result = _keep_guarding_aliases(result, target)
        return result

    def __repr__(self, **kwargs):
        return _as_plain_tensor(self, torch.Tensor.__repr__, **kwargs)

    def __deepcopy__(self, memo):
        return _as_plain_tensor(self, torch.Tensor.__deepcopy__, memo)

    def __reduce_ex__(self, protocol):
        return _as_plain_tensor(self, torch.Tensor.__reduce_ex__, protocol)


def _as_plain_tensor(tensor: ComputedWeight, method, *args, **kwargs):
    """Call a ``torch.Tensor`` method on ``tensor`` as the plain tensor it is underneath."""
    tensor.__class__ = torch.Tensor
    try:
        return method(tensor, *args, **kwargs)
    finally:
        tensor.__class__ = ComputedWeight


def _in_place_message(tensor: ComputedWeight, func) -> str:
    name, formula, owner = tensor._maskutils_what
    what = getattr(func, "__name__", "")
    what = {"__set__": "an assignment to one of its attributes (.data = ...)",
            "__setitem__": "an item assignment (weight[...] = ...)"}.get(what, what or "it")
    original = f"layer.parametrizations.{name}.original"
    return (
        f"layer.{name} of this {owner} is computed from the stored original on every access "
        f"({formula}), so an in-place write into it ({what}) would change a temporary copy "
        f"and leave the layer as it was. Write into the stored original instead: with "
        f"torch.no_grad(): nn.init.normal_({original}), or assign layer.{name} = new_values "
        f"(the mask stays). For reset_parameters(), run its initialisation on {original}"
    )


def _keep_guarding_aliases(result, source: ComputedWeight):
    """Views and aliases of a ``ComputedWeight`` (``w[0]``, ``w.t()``, ``w.data``) stay one."""
    if isinstance(result, (tuple, list)):
        return type(result)(_keep_guarding_aliases(r, source) for r in result)
    if type(result) is not torch.Tensor or result.layout != torch.strided:
        return result
    try:
        ptr = source.untyped_storage().data_ptr()
        shares = ptr != 0 and result.untyped_storage().data_ptr() == ptr
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, wrappers)
        return result
    if shares:
        result.__class__ = ComputedWeight
        result._maskutils_what = source._maskutils_what
    return result


def _read_by_a_forward() -> bool:
    """Is a module's ``forward`` reading the parametrized tensor (the hot path: no guard)?

    Walks up from the parametrization to the frame that read ``module.<name>``.
    """
    frame = sys._getframe(2)
    for _ in range(24):
        if frame is None:
            break
        code = frame.f_code
        if code.co_name == "get_parametrized" and code.co_filename == _PARAMETRIZE_FILE:
            caller = frame.f_back
            return caller is not None and caller.f_code.co_name == "forward"
        frame = frame.f_back
    return True  # not read as a module attribute: leave it plain


def _guard_computed(value: torch.Tensor, what: tuple[str, str, str]) -> torch.Tensor:
    """``value`` as a ``ComputedWeight`` when it is read outside a forward pass (else as is)."""
    if (type(value) is not torch.Tensor or torch.compiler.is_compiling()
            or torch._C._get_tracing_state() is not None or _read_by_a_forward()):
        return value
    try:
        value.__class__ = ComputedWeight
    except TypeError:  # pragma: no cover - a tensor type that cannot change class
        return value
    value._maskutils_what = what  # (tensor name, formula, kind of layer) for the message
    return value


def _masked(original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``original * mask``, and exactly 0 wherever the mask is 0, whatever the original holds.

    A product alone turns ``inf * 0`` into NaN. ``torch.where`` fixes that, but on a CPU it is
    several times slower than the product, so there the product comes first and a sum checks
    it: a NaN anywhere makes the sum NaN, and only then does ``torch.where`` run. On other
    devices, and when compiled, the selection always runs (it is cheap there, and the check
    would wait for the device). Gradients are those of the product: zero at masked entries.

    >>> _masked(torch.tensor([float("inf"), float("nan"), 2.0]), torch.tensor([0.0, 0, 1]))
    tensor([0., 0., 2.])
    """
    out = original * mask
    if (original.is_cpu and not out.is_complex() and not torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active()
            and not math.isnan(out.detach().sum().item())):
        return out
    return torch.where(mask != 0, out, 0)


class Mask(nn.Module):
    """The parametrization ``weight = original * mask``; the mask is a buffer.

    A masked entry reads exactly 0, whatever the original holds there (``inf`` too).
    ``right_inverse`` makes assignment work on a masked layer: ``layer.weight = tensor`` stores
    a copy of ``tensor`` (an ``nn.Parameter``'s own storage) in the original, which stays the
    same ``Parameter`` object, and the layer then reads ``tensor * mask``. Read outside a
    forward pass, the weight is a ``ComputedWeight``, which refuses in-place writes.
    """

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self._registering = False
        self._holders = 0  # how many (module, name) places read through this mask (ties: > 1)
        self._what = ("weight", "original * mask", "masked layer")  # for error messages

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        what = getattr(self, "_what", ("weight", "original * mask", "masked layer"))
        return _guard_computed(_masked(original, self.mask), what)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        if self._registering:  # register_parametrization: keep the original as it is
            return value
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"a masked weight can be set to a torch.Tensor, got {type(value).__name__}")
        if value.shape != self.mask.shape:
            raise ValueError(
                f"cannot set a masked weight of shape {tuple(self.mask.shape)} "
                f"to a tensor of shape {tuple(value.shape)}"
            )
        if isinstance(value, nn.Parameter):
            # stored as given, as a plain module stores an assigned Parameter (the original
            # stays the same Parameter object, so an optimizer keeps training it)
            return value
        dtype = self.mask.dtype if value.is_floating_point() else value.dtype
        return value.detach().to(device=self.mask.device, dtype=dtype).clone()


def _check_module(module) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")


def _refuse_if_ddp_wrapped(module) -> None:
    """Refuse a ``DistributedDataParallel`` wrapper (or a model holding one): mask before wrapping.

    Masking registers a new parameter object whose gradients DDP's reducer never sees, and
    unmasking removes one it waits for. DDP marks neither its inner ``module`` nor the
    parameters (torch 2.13), so only the wrapper itself can be detected (chapter 9).
    """
    ddp = getattr(nn.parallel, "DistributedDataParallel", None)
    if ddp is not None and any(isinstance(m, ddp) for m in module.modules()):
        raise ValueError(
            f"got a DistributedDataParallel wrapper ({type(module).__name__} is or holds one): "
            "mask before wrapping. Put a mask (all ones is fine) on every layer of the plain "
            "model, then wrap it; later, shrink those masks in place (apply_mask on the same "
            "layers). Remove masks only when training with the wrapper is over (on ddp.module)"
        )


def _computed_by_hooks(module: nn.Module) -> dict[str, tuple[str, list[str], str]]:
    """``{tensor name: (tool, stored tensors, what to do)}`` for every tensor of ``module`` that a
    forward pre-hook recomputes before each forward: ``torch.nn.utils.prune`` and the old,
    hook-based ``weight_norm`` and ``spectral_norm``. Such a tensor is a plain attribute, not
    a parameter; masking the stored tensors underneath would miss the requested sparsity."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    found = {}
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, BasePruningMethod):
            name = hook._tensor_name
            found[name] = ("torch.nn.utils.prune", [f"{name}_orig", f"{name}_mask"],
                           f"make that pruning permanent first, then mask: "
                           f"torch.nn.utils.prune.remove(layer, {name!r}) keeps its zeros")
        elif isinstance(hook, WeightNorm):
            name = hook.name
            found[name] = ("the old, hook-based torch.nn.utils.weight_norm",
                           [f"{name}_g", f"{name}_v"],
                           "use torch.nn.utils.parametrizations.weight_norm instead (masks go "
                           "on top of it), or remove it first (torch.nn.utils.remove_weight_norm)")
        elif isinstance(hook, SpectralNorm):
            name = hook.name
            found[name] = ("the old, hook-based torch.nn.utils.spectral_norm",
                           [f"{name}_orig", f"{name}_u"],
                           "use torch.nn.utils.parametrizations.spectral_norm instead (masks go "
                           "on top of it), or remove it first (torch.nn.utils.remove_spectral_norm)")
    return found


def _check_name(module: nn.Module, name: str) -> torch.Tensor:
    """Return the current (effective) tensor ``module.<name>``, or raise a clear error."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'weight', got {name!r}")
    is_param = name in dict(module.named_parameters(recurse=False))
    if not (is_param or parametrize.is_parametrized(module, name)):
        kind = type(module).__name__
        hooked = _computed_by_hooks(module)
        if name in hooked:
            tool, stored, fix = hooked[name]
            raise ValueError(
                f"{kind}.{name} is not a parameter: {tool} computes it from "
                f"{', '.join(stored)} before every forward, so a mask on it would be "
                f"overwritten; {fix}"
            )
        if isinstance(module._buffers.get(name), torch.Tensor):
            raise ValueError(
                f"{kind} has no parameter {name!r}: it is a buffer, and masks go on parameters "
                f"(a frozen weight kept as a buffer can be registered as "
                f"nn.Parameter(tensor, requires_grad=False) and then masked)"
            )
        known = sorted(dict(module.named_parameters(recurse=False)))
        if parametrize.is_parametrized(module):
            known += sorted(module.parametrizations.keys())
        raise ValueError(
            f"{kind} has no parameter {name!r}; its parameters are {sorted(set(known))}"
        )
    return getattr(module, name)


def _mask_modules(module: nn.Module, name: str) -> list[Mask]:
    if not parametrize.is_parametrized(module, name):
        return []
    return [p for p in module.parametrizations[name] if isinstance(p, Mask)]


def _stored(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor that holds the values of ``module.<name>`` (the original when parametrized)."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return module._parameters[name]


def check_mask(mask, like: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """Return ``mask`` as a 0/1 tensor of ``like``'s dtype and device, or raise a clear error."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of 0s and 1s, got {type(mask).__name__}")
    if like.device.type == "meta":
        raise ValueError(
            f"the parameter is on the meta device, so it has no values yet (a model built "
            f"under torch.device('meta')); a mask put on it would be lost when the model is "
            f"materialized (to_empty). Load the weights first (model.to_empty(device=...) "
            f"and load_state_dict), then mask"
        )
    if mask.device.type == "meta":
        raise ValueError(
            f"{what} is on the meta device, so it holds no values to check or apply; build it "
            f"on a real device (e.g. cpu), from the weight's values"
        )
    if mask.shape != like.shape:
        raise ValueError(
            f"{what} has shape {tuple(mask.shape)} but the parameter has shape {tuple(like.shape)}"
        )
    m = mask.detach()
    if m.is_floating_point() and torch.isnan(m).any():
        raise ValueError(f"{what} contains NaN; a mask holds only 0s and 1s")
    if not ((m == 0) | (m == 1)).all():
        bad = m[(m != 0) & (m != 1)].flatten()[:3].tolist()
        raise ValueError(
            f"{what} must hold only 0s and 1s, found values such as {bad}; "
            "threshold it first, e.g. (scores > t).float()"
        )
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return m.to(device=like.device, dtype=dtype).clone()


# --- where a parameter lives: every (module, name) that holds it ----------------------------

def _walk(model: nn.Module, prefix: str = ""):
    """``(name, module)`` for every module, skipping parametrization internals."""
    yield prefix, model
    for child_name, child in model.named_children():
        if child_name == "parametrizations" and parametrize.is_parametrized(model):
            continue
        yield from _walk(child, f"{prefix}.{child_name}" if prefix else child_name)


def _places(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """``{id(stored tensor): [(module name, module, parameter name), ...]}`` for every
    parameter of ``model``, plain or parametrized; a tied parameter has several places."""
    found: dict[int, list] = {}
    for mod_name, module in _walk(model):
        names = list(module._parameters)
        if parametrize.is_parametrized(module):
            names += [n for n in module.parametrizations if n not in names]
        for pname in names:
            if pname in module._parameters and module._parameters[pname] is None:
                continue
            if parametrize.is_parametrized(module, pname):
                plist = module.parametrizations[pname]
                if not hasattr(plist, "original"):
                    continue
                stored = plist.original
            else:
                stored = module._parameters[pname]
            found.setdefault(id(stored), []).append((mod_name, module, pname))
    return found


def _full(mod_name: str, pname: str) -> str:
    return f"{mod_name}.{pname}" if mod_name else pname


def _own_rnn_deepcopy(module: nn.Module) -> None:
    """Let a masked RNN be deep-copied after a training forward.

    ``nn.RNNBase`` caches the weights it last computed in ``_flat_weights``; with a mask those
    are non-leaf tensors of the autograd graph, which ``copy.deepcopy`` refuses. The copy gets
    detached values instead (its next forward recomputes them from its own parameters).
    """
    if not isinstance(module, nn.RNNBase):
        return
    cls = type(module)
    base_copy = cls.__dict__.get("__deepcopy__")
    if base_copy is None or getattr(base_copy, "_maskutils", False):
        return

    def deepcopy_detached(self, memo):
        cached = self.__dict__.get("_flat_weights")
        if cached is not None:
            self.__dict__["_flat_weights"] = [
                w.detach() if isinstance(w, torch.Tensor) and w.grad_fn is not None else w
                for w in cached]
        try:
            return base_copy(self, memo)
        finally:
            if cached is not None:
                self.__dict__["_flat_weights"] = cached

    deepcopy_detached._maskutils = True
    cls.__deepcopy__ = deepcopy_detached


def _register(places: list[tuple[nn.Module, str]], mask: torch.Tensor):
    """Mask every place of one parameter with one shared ``Mask``; all or nothing.

    Returns a function that undoes it exactly (masks, classes and parameter order).
    """
    existing = [_mask_modules(module, name) for module, name in places]
    if all(existing) and len({id(e[-1]) for e in existing}) == 1:
        buffer = existing[0][-1].mask
        saved = buffer.clone()
        with torch.no_grad():
            buffer.mul_(mask)      # stack: intersect the one shared mask

        def undo_stack():
            with torch.no_grad():
                buffer.copy_(saved)
        return undo_stack
    shared = Mask(mask)
    first, name = places[0]
    owner = parametrize.type_before_parametrizations(first).__name__
    shared._what = (name, "original * mask", f"masked {owner}")
    done = []

    def undo():
        for module, name, order in reversed(done):
            _unregister_last(module, name)
            shared._holders -= 1
            module._parameters = {k: module._parameters[k] for k in order
                                  if k in module._parameters} | module._parameters

    try:
        for module, name in places:
            order = list(module._parameters)
            shared._registering = True
            try:
                parametrize.register_parametrization(module, name, shared)
            finally:
                shared._registering = False
            shared._holders += 1
            done.append((module, name, order))
            _own_rnn_deepcopy(module)
    except Exception:
        undo()
        raise
    return undo


def _unregister_last(module: nn.Module, name: str) -> None:
    """Undo the last ``register_parametrization`` of ``module.<name>`` (a rollback)."""
    plist = module.parametrizations[name]
    own_parametrized_class(module)
    if len(plist) == 1:
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    else:
        del plist[len(plist) - 1]


def _tied_places(module: nn.Module, name: str, model: nn.Module | None, function: str):
    """The places that hold ``module.<name>``: just it without ``model``, every one with it."""
    if model is None:
        return [(module, name)], []
    _check_module(model)
    if parametrize.is_parametrized(module, name) and not hasattr(
            module.parametrizations[name], "original"):  # several stored tensors: never tied
        found = [_full(n, name) for n, m in _walk(model) if m is module]
        if not found:
            raise ValueError(
                f"{function}: model= does not contain this {type(module).__name__}; pass the "
                "model that the module belongs to (or leave model out)"
            )
        return [(module, name)], found[:1]
    stored = _stored(module, name)
    places = _places(model).get(id(stored))
    if not places or not any(m is module and n == name for _, m, n in places):
        raise ValueError(
            f"{function}: model= does not contain this {type(module).__name__}; pass the model "
            "that the module belongs to (or leave model out)"
        )
    return [(m, n) for _, m, n in places], [_full(a, n) for a, _, n in places]


def apply_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight", *,
               model: nn.Module | None = None) -> nn.Module:
    """Mask ``module.<name>``: afterwards it reads ``original * mask`` on every access.

    Masking an already masked parameter intersects the masks. Returns ``module``.

    Under ``DistributedDataParallel``, mask before wrapping: a first mask registers a new
    parameter that the wrapper never reduces, and ``apply_mask`` refuses a DDP wrapper. Masks
    that exist before wrapping can be shrunk in place later (chapter 9).

    A parameter can be tied: shared by several modules, like a language model's embedding and
    output head. Pass the whole model as ``model=`` and every place that holds the parameter is
    masked with one mask (the head and the embedding then read the same zeros). Without
    ``model``, only ``module`` sees the mask: ``apply_mask`` cannot see the other places.
    ``mask_layers`` always finds them. On any error nothing is changed.

    >>> layer = apply_mask(nn.Linear(2, 1), torch.tensor([[1.0, 0.0]]))
    >>> layer.weight[0, 1].item() == 0
    True
    >>> emb = nn.Embedding(3, 2)
    >>> tied = nn.ModuleDict({"embed": emb, "head": nn.Linear(2, 3, bias=False)})
    >>> tied["head"].weight = emb.weight
    >>> _ = apply_mask(tied["head"], torch.tensor([[1.0, 0], [0, 1], [1, 1]]), model=tied)
    >>> torch.equal(tied["embed"].weight, tied["head"].weight)
    True
    """
    _check_module(module)
    _refuse_if_ddp_wrapped(module)
    current = _check_name(module, name)
    mask = check_mask(mask, current)
    places, names = _tied_places(module, name, model, "apply_mask")
    _check_tie_state(places, names)
    _register(places, mask)
    return module


def _check_tie_state(places, names) -> None:
    """Every place of a tied parameter must be masked the same way before masking it again."""
    if len(places) < 2:
        return
    masks = [_mask_modules(m, n) for m, n in places]
    if all(masks) and len({id(x[-1]) for x in masks}) == 1:
        return
    if not any(masks) and not any(parametrize.is_parametrized(m, n) for m, n in places):
        return
    state = ", ".join(
        f"{full} ({'masked' if ms else 'not masked'})" for full, ms in zip(names, masks))
    raise ValueError(
        f"one tied parameter is used in {len(places)} places that are not masked alike: {state}; "
        "remove the masks first (remove_mask(..., bake=False, model=model)) and mask it once "
        "with apply_mask(..., model=model) or mask_layers"
    )


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The mask buffer of ``module.<name>``, or ``None`` when it is not masked.

    >>> get_mask(nn.Linear(2, 1)) is None
    True
    """
    _check_module(module)
    _check_name(module, name)
    found = _mask_modules(module, name)
    return found[-1].mask if found else None


def own_parametrized_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before a parametrization is removed.

    ``parametrize`` injects a class (``ParametrizedLinear``) per module, and ``copy.deepcopy``
    shares it between a module and its copies; ``remove_parametrizations`` deletes the property
    from that class, which would break every copy. A sibling class with the same contents is safe.
    """
    cls = type(module)
    contents = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, contents)


def remove_mask(module: nn.Module, name: str = "weight", bake: bool = True, *,
                model: nn.Module | None = None) -> nn.Module:
    """Remove the mask of ``module.<name>`` and leave a plain ``Parameter`` (the same object).

    ``bake=True`` keeps the masked values (the module then loads into the unmasked
    architecture); ``bake=False`` restores the dense original, whatever the optimizer
    did to its masked entries while the mask was on. Returns ``module``.

    Tied parameters: with ``model=`` the mask is removed from every place that shares the
    parameter, and baking is refused if some place would see its values change (a place that
    reads the parameter unmasked). A mask shared by tied places can be baked in one place
    without ``model`` (the others keep reading the same values), but ``bake=False`` needs
    ``model=`` so that no place is left reading different values from the others. Without
    ``model=``, ``remove_mask`` cannot see a place that reads the tensor unmasked (a head
    masked alone, tied to its input embedding): pass ``model=`` or use ``remove_masks(model)``,
    which both refuse to bake into such a place.

    >>> layer = apply_mask(nn.Linear(2, 1), torch.tensor([[1.0, 0.0]]))
    >>> remove_mask(layer).weight[0, 1].item() == 0
    True
    """
    _check_module(module)
    _refuse_if_ddp_wrapped(module)
    _check_name(module, name)
    if not _mask_modules(module, name):
        raise ValueError(f"{type(module).__name__}.{name} has no mask to remove")
    others = [p for p in module.parametrizations[name] if not isinstance(p, Mask)]
    if others:
        kinds = ", ".join(type(p).__name__ for p in others)
        raise ValueError(
            f"{type(module).__name__}.{name} also has other parametrizations ({kinds}); "
            "remove those first (torch.nn.utils.parametrize.remove_parametrizations)"
        )
    mask_module = _mask_modules(module, name)[-1]
    places, names = _tied_places(module, name, model, "remove_mask")
    if model is not None and len(places) > 1:
        targets = [(m, n) for m, n in places
                   if any(x is mask_module for x in _mask_modules(m, n))]
        holders = [(full[: -len(n) - 1] if full != n else "", m, n)
                   for (m, n), full in zip(places, names)]
        changed = _changed_by_baking(holders, targets) if bake else []
        unmasked = [full for (m, n), full in zip(places, names)
                    if not any(x is mask_module for x in _mask_modules(m, n)) and full in changed]
        if unmasked and bake:
            here = next(full for (m, n), full in zip(places, names) if m is module and n == name)
            raise ValueError(
                f"{here} is tied to {unmasked}, which "
                "read it unmasked: baking would write the mask's zeros into them too; mask "
                "every place (apply_mask(..., model=model)) or remove with bake=False"
            )
    else:
        if mask_module._holders > 1 and not bake:
            raise ValueError(
                f"{type(module).__name__}.{name} is tied: its mask is shared by "
                f"{mask_module._holders} places; bake=False would leave this place dense while "
                "the others stay masked; pass model=model to remove the mask everywhere"
            )
        targets = [(module, name)]
    for m, n in targets:
        own_parametrized_class(m)  # copies made by deepcopy share the class
        parametrize.remove_parametrizations(m, n, leave_parametrized=bool(bake))
        mask_module._holders -= 1
    return module


def masked_parameters(model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
    """``{original parameter: mask}`` for every parameter of ``model`` masked by ``apply_mask``,
    whatever its name (``weight``, ``in_proj_weight``, ``weight_hh_l0``, a bias ...); a tied
    parameter appears once.

    This is the dict that ``mask_gradients`` and ``project_after_step`` take.

    >>> lstm = nn.LSTM(4, 4)
    >>> _ = apply_mask(lstm, torch.ones(16, 4), name="weight_ih_l0")
    >>> [tuple(p.shape) for p in masked_parameters(lstm)]
    [(16, 4)]
    """
    _check_module(model)
    found = {}
    for mod_name, sub in _walk(model):
        if parametrize.is_parametrized(sub):
            for name, plist in sub.parametrizations.items():
                masks = [p for p in plist if isinstance(p, Mask)]
                if masks and not hasattr(plist, "original"):
                    kinds = ", ".join(type(p).__name__ for p in plist if not isinstance(p, Mask))
                    raise ValueError(
                        f"masked_parameters: {_full(mod_name, name)} is masked on top of a "
                        f"parametrization with several stored tensors ({kinds}, e.g. "
                        f"torch.nn.utils.parametrizations.weight_norm), so no single parameter "
                        f"holds the masked values to pair with the mask. The forward mask "
                        f"alone keeps those entries at zero; to use hooks, remove that "
                        f"parametrization first (parametrize.remove_parametrizations(layer, "
                        f"{name!r}) after remove_mask(layer, {name!r}, bake=False)) and mask "
                        f"the plain weight"
                    )
                if masks:
                    found[plist.original] = masks[-1].mask
    return found


def remove_masks(model: nn.Module, bake: bool = True) -> list[str]:
    """Remove every ``apply_mask`` mask of ``model`` (tied places together); returns the names.

    ``bake=True`` leaves plain parameters holding the masked values, the state that
    ``save_pretrained``, ``torch.save(model.state_dict())`` into the unmasked architecture and
    tied-weight helpers such as ``tie_weights()`` expect. Baking writes into the stored tensor,
    so a tied tensor is baked only when every place that reads it would read the same values
    afterwards (a tie masked once with ``mask_layers`` or ``apply_mask(..., model=model)``);
    when a place reads it unmasked (an output head masked alone, tied to the input embedding),
    ``remove_masks`` raises an error naming both places and removes nothing.

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> _ = mask_layers(model, 0.5)
    >>> remove_masks(model)
    ['0.weight', '2.weight']
    """
    _check_module(model)
    todo = []
    for mod_name, sub in _walk(model):
        if parametrize.is_parametrized(sub):
            for name in list(sub.parametrizations):
                if _mask_modules(sub, name):
                    todo.append((_full(mod_name, name), sub, name))
    for full, sub, name in todo:
        others = [p for p in sub.parametrizations[name] if not isinstance(p, Mask)]
        if others:
            raise ValueError(
                f"{full} also has other parametrizations "
                f"({', '.join(type(p).__name__ for p in others)}); remove those first"
            )
    if bake:
        _refuse_baking_into_other_places(model)
    for full, sub, name in todo:
        if _mask_modules(sub, name):
            own_parametrized_class(sub)
            mask_module = _mask_modules(sub, name)[-1]
            parametrize.remove_parametrizations(sub, name, leave_parametrized=bool(bake))
            mask_module._holders -= 1
    return [full for full, _, _ in todo]


def _effective_mask(module: nn.Module, name: str) -> torch.Tensor | None:
    """The product of every ``apply_mask`` mask on ``module.<name>`` (None: not masked)."""
    masks = _mask_modules(module, name)
    if not masks:
        return None
    product = masks[0].mask
    for extra in masks[1:]:
        product = product * extra.mask
    return product


def _changed_by_baking(holders, baked) -> list[str]:
    """The places of one tied tensor whose values would change if ``baked`` places baked.

    ``holders``: ``[(name, module, tensor name)]``, every place that reads the tensor;
    ``baked``: the ``(module, tensor name)`` pairs whose masks are removed with ``bake=True``
    (each writes what it reads into the shared tensor, in turn). A tie masked once, or a place
    whose masked entries already hold zeros, does not change.
    """
    stored = _stored(holders[0][1], holders[0][2])
    with torch.no_grad():
        masks = [_effective_mask(m, n) for _, m, n in holders]
        before = [stored if mask is None else _masked(stored, mask) for mask in masks]
        final = stored
        for (_, m, n), mask in zip(holders, masks):
            if mask is not None and any(m is bm and n == bn for bm, bn in baked):
                final = _masked(final, mask)
        changed = []
        for (name, m, n), mask, now in zip(holders, masks, before):
            kept = mask is not None and not any(m is bm and n == bn for bm, bn in baked)
            after = _masked(final, mask) if kept else final
            same = (now == after) | (torch.isnan(now) & torch.isnan(after))
            if not bool(same.all()):
                changed.append(_full(name, n))
    return changed


def _refuse_baking_into_other_places(model: nn.Module) -> None:
    """Baking writes the masked values into the stored tensor. When another place reads that
    tensor (a tie) unmasked or through a different mask, baking changes what it computes:
    refuse, naming the places. A tie masked once bakes safely."""
    for holders in _places(model).values():
        masked = [(m, n) for _, m, n in holders if _mask_modules(m, n)]
        if len(holders) < 2 or not masked:
            continue
        changed = _changed_by_baking(holders, masked)
        if changed:
            names = [_full(a, n) for a, _, n in holders]
            first = next(_full(a, n) for a, m, n in holders if _mask_modules(m, n))
            raise ValueError(
                f"remove_masks(bake=True): {', '.join(names)} are one tied tensor, and baking "
                f"{first}'s mask into it would silently change what {', '.join(changed)} "
                f"{'reads' if len(changed) == 1 else 'read'} (a place that reads it unmasked, "
                f"or through another mask). Nothing was removed. Mask every place alike first "
                f"(apply_mask(layer, mask, model=model), or mask_layers), remove with "
                f"bake=False, or give {first} its own copy of the tensor (untie it)"
            )


def load_dense_state_dict(model: nn.Module, state_dict: dict, strict: bool = True) -> nn.Module:
    """Load a checkpoint of the *unmasked* architecture into a masked ``model``; keep the masks.

    A dense checkpoint names a masked weight ``layer.weight``; the masked model stores it as
    ``layer.parametrizations.weight.original`` (next to the mask buffer), so a plain
    ``load_state_dict`` refuses it. This maps the names, checks every key and shape first
    (nothing is loaded when one is wrong) and leaves the masks as they are, so the model reads
    the loaded values times its masks. A tied parameter may be given under any of its names.

    >>> dense = nn.Linear(4, 2)
    >>> masked = apply_mask(nn.Linear(4, 2), torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]]))
    >>> _ = load_dense_state_dict(masked, dense.state_dict())
    >>> torch.equal(masked.weight, dense.weight * get_mask(masked))
    True
    """
    _check_module(model)
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    current = model.state_dict(keep_vars=True)
    plain_of = {}       # dense name -> the model's own key
    for key in current:
        if ".parametrizations." in f".{key}":
            head, _, rest = f".{key}".partition(".parametrizations.")
            pname, _, tail = rest.partition(".")
            if tail == "original":
                plain_of[_full(head[1:], pname)] = key
            continue
        plain_of[key] = key
    group = {}          # the model's key -> every key holding the same tensor
    by_tensor: dict[int, list[str]] = {}
    for dense, key in plain_of.items():
        by_tensor.setdefault(id(current[key]), []).append(dense)
    for names in by_tensor.values():
        for n in names:
            group[n] = names
    unexpected = [k for k in state_dict if k not in plain_of]
    missing = [k for k in plain_of if not any(n in state_dict for n in group[k])]
    wrong = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(current[plain_of[k]].shape)}"
             for k, v in state_dict.items() if k in plain_of and isinstance(v, torch.Tensor)
             and v.shape != current[plain_of[k]].shape]
    if wrong or (strict and (unexpected or missing)):
        raise ValueError(
            "load_dense_state_dict: nothing loaded; "
            + "; ".join(part for part in (
                f"shapes differ: {wrong}" if wrong else "",
                f"unexpected keys: {unexpected}" if strict and unexpected else "",
                f"missing keys: {missing}" if strict and missing else "") if part)
        )
    sources = []
    for names in by_tensor.values():
        given = [n for n in names if n in state_dict]
        if not given:
            continue
        first = state_dict[given[0]]
        if any(not torch.equal(state_dict[n], first) for n in given[1:]):
            raise ValueError(
                f"load_dense_state_dict: nothing loaded; {given} are one tied parameter in "
                "the model but hold different values in the checkpoint"
            )
        sources.append((current[plain_of[names[0]]], first))
    with torch.no_grad():
        for target, value in sources:
            target.copy_(value)
    return model


# --- mask_layers ------------------------------------------------------------------------------

MASKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
EMBEDDING_LIKE = ("a class token or position embedding held as a plain parameter (added to "
                  "the activations, not a weight matrix; pass embeddings=True to mask it)")


def _looks_like_an_embedding(pname: str) -> bool:
    """Is a plain parameter by its name a token or position embedding (ViT's ``cls_token`` and
    ``position_embeddings``, torchvision's ``class_token`` and ``pos_embedding``, timm's
    ``pos_embed``, CLIP's ``positional_embedding``, Swin's ``relative_position_bias_table``)?"""
    name = pname.lower()
    return ("token" in name or "position" in name or ("pos" in name and "emb" in name)
            or name.endswith(("embedding", "embeddings", "embed")))


def _stacked_on_several_tensors(model: nn.Module):
    """``(name, module, tensor name)`` of every parametrized tensor computed from several stored
    tensors (``torch.nn.utils.parametrizations.weight_norm``: ``original0``, ``original1``).
    ``mask_layers`` masks them on top, like any parametrized weight."""
    for mod_name, module in _walk(model):
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                if not hasattr(plist, "original"):
                    yield _full(mod_name, pname), module, pname


def _frozen_weights(model: nn.Module):
    """``(name, module)`` of every floating-point buffer with at least two dimensions (a weight
    kept frozen as a buffer), except the buffers of ``torch.nn.utils.prune`` and the old
    ``spectral_norm``; the masks' own buffers are parametrization internals, never listed."""
    for mod_name, module in _walk(model):
        internal = {f"{name}{suffix}" for name in _computed_by_hooks(module)
                    for suffix in ("_mask", "_u", "_v")}
        for bname, buffer in module._buffers.items():
            if (isinstance(buffer, torch.Tensor) and buffer.is_floating_point()
                    and buffer.dim() >= 2 and bname not in internal):
                yield _full(mod_name, bname), module


class MaskedLayers(dict):
    """What ``mask_layers`` did: ``{parameter name: the new mask}``, plus the report.

    Keys are parameter names as ``model.named_parameters()`` spells them (``"0.weight"``,
    ``"encoder.layers.0.self_attn.in_proj_weight"``); for a layer's ``weight`` the layer's
    own name works too (``masks["0"]``). ``left_out`` maps every weight with at least two
    dimensions that was not masked to the reason; ``tied`` maps a masked parameter to its other
    names (the places that share it and its mask).
    """

    def __init__(self, masks, left_out, tied):
        super().__init__(masks)
        self.left_out = dict(left_out)
        self.tied = dict(tied)

    def _alias(self, key):
        if isinstance(key, str) and not dict.__contains__(self, key):
            alias = _full(key, "weight")
            if dict.__contains__(self, alias):
                return alias
        return key

    def __missing__(self, key):
        alias = self._alias(key)
        if alias != key:
            return dict.__getitem__(self, alias)
        raise KeyError(key)

    def __contains__(self, key):
        return dict.__contains__(self, self._alias(key))

    def get(self, key, default=None):
        return dict.get(self, self._alias(key), default)

    def report(self) -> str:
        """The list of what was masked (with its sparsity), tied, and left out (with why)."""
        lines = [f"masked {len(self)} parameter(s):"]
        for name, mask in self.items():
            removed = int((mask == 0).sum())
            lines.append(f"  {name} {tuple(mask.shape)}: {removed / mask.numel():.0%} "
                         f"of {mask.numel():,} removed")
            if name in self.tied:
                lines.append(f"    tied: also {', '.join(self.tied[name])}")
        if self.left_out:
            lines.append(f"left out {len(self.left_out)}:")
            for name, why in self.left_out.items():
                why, _, tie = why.partition("; tied to ")
                lines.append(f"  {name}: {why}")
                if tie:
                    lines.append(f"    tied: also {tie}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.report()

    __str__ = __repr__


def _matcher(spec, what: str):
    """A predicate ``(name, module) -> bool`` from patterns or a callable (None: no filter)."""
    if spec is None:
        return None
    if callable(spec):
        return spec
    patterns = [spec] if isinstance(spec, str) else spec
    try:
        patterns = list(patterns)
    except TypeError:
        patterns = None
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"{what} must be a parameter-name pattern such as '*.attn.*', a list of them, or a "
            f"function (name, module) -> bool, got {spec!r}"
        )
    return lambda name, module: any(
        fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


def mask_layers(model: nn.Module, sparsity: float, how: str = "magnitude",
                generator: torch.Generator | None = None, *, embeddings: bool | None = None,
                include=None, exclude=None) -> MaskedLayers:
    """Mask every weight matrix or kernel of ``model`` at ``sparsity`` (layer-wise).

    Every parameter with at least two dimensions is masked, whatever module holds it: Linear,
    Conv*d, ConvTranspose*d, Bilinear, ``nn.MultiheadAttention`` (``in_proj_weight`` or
    ``q/k/v_proj_weight``, and ``out_proj``), RNN/LSTM/GRU (``weight_ih_l*``, ``weight_hh_l*``)
    and any other module (``transformers``' ``Conv1D``). Biases and norms (1-D) are never
    masked. Embeddings are masked only with ``embeddings=True``: embedding tables
    (``nn.Embedding``) and the class tokens and position embeddings that vision transformers
    keep as plain parameters (``cls_token``, ``position_embeddings``, ``pos_embedding``). By
    default (``None``) they are left out with a warning, ``embeddings=False`` leaves them out
    quietly. ``include`` and ``exclude`` (parameter-name patterns such as ``"*.attn.*"``, a list
    of them, or a function ``(name, module) -> bool``) choose among the rest.

    ``sparsity`` is in [0, 1): 1 would remove every weight. ``how`` is ``"magnitude"`` (remove
    the smallest) or ``"random"``. Masks stack on any mask already there, and on other
    parametrizations (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``: the
    mask applies to the weight they compute). A weight that a forward pre-hook recomputes
    (``torch.nn.utils.prune``, the old hook-based ``weight_norm`` and ``spectral_norm``) is
    refused with an error saying how to convert it, since masking its stored tensor underneath
    would miss the sparsity; ``exclude`` it to mask the rest. A tied parameter (shared by several
    modules) is masked once, with one mask every place reads. Everything is checked before
    anything changes: on an error the model is exactly as it was. Returns a ``MaskedLayers``
    dict ``{parameter name: new mask}`` whose ``left_out`` names every weight with at least two
    dimensions that was not masked, with the reason (buffers included: a frozen weight kept as
    a buffer is never masked), and whose ``tied`` says what is shared; printing it gives the
    list.

    >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> sorted(mask_layers(model, 0.5))
    ['0.weight', '2.weight']
    >>> lstm = nn.LSTM(4, 8)
    >>> print(mask_layers(lstm, 0.5))
    masked 2 parameter(s):
      weight_ih_l0 (32, 4): 50% of 128 removed
      weight_hh_l0 (32, 8): 50% of 256 removed
    """
    from .masks import check_generator, check_sparsity, magnitude_mask, random_mask

    _check_module(model)
    _refuse_if_ddp_wrapped(model)
    sparsity = check_sparsity(sparsity, below_one=True)
    generator = check_generator(generator)
    builders = {
        "magnitude": lambda w: magnitude_mask(w, sparsity),
        "random": lambda w: random_mask(w, sparsity, generator=generator),
    }
    if how not in builders:
        raise ValueError(f"how must be one of {sorted(builders)}, got {how!r}")
    if embeddings is not None and not isinstance(embeddings, bool):
        raise TypeError(f"embeddings must be True, False or None, got {embeddings!r}")
    keep = _matcher(include, "include")
    drop = _matcher(exclude, "exclude")

    chosen, left_out, quiet, tied, refused = [], {}, {}, {}, {}

    def filtered(names, modules) -> bool:
        """Leave it out quietly when include/exclude say so (True)."""
        if keep is not None and not any(keep(n, m) for n, m in zip(names, modules)):
            quiet[names[0]] = "not matched by include"
            return True
        if drop is not None and any(drop(n, m) for n, m in zip(names, modules)):
            quiet[names[0]] = "matched by exclude"
            return True
        return False

    def embedding_like(names, why) -> bool:
        """Leave out an embedding unless embeddings=True (warned about when None)."""
        if embeddings:
            return False
        if len(names) > 1:
            why += f"; tied to {', '.join(names[1:])}"
        (left_out if embeddings is None else quiet)[names[0]] = why
        return True

    for places in _places(model).values():
        mod_name, module, pname = places[0]
        names = [_full(a, n) for a, _, n in places]
        modules = [m for _, m, _ in places]
        if getattr(module, pname).dim() < 2:
            continue
        if any(isinstance(m, EMBEDDINGS) for m in modules):
            if embedding_like(names, "an embedding (pass embeddings=True to mask it)"):
                continue
        elif _looks_like_an_embedding(pname) and embedding_like(names, EMBEDDING_LIKE):
            continue
        hooked = {stored: (name, tool, stored_names, fix) for name, (tool, stored_names, fix)
                  in _computed_by_hooks(module).items() for stored in stored_names}
        if pname in hooked:
            name, tool, stored_names, fix = hooked[pname]
            effective = _full(mod_name, name)
            if not filtered([effective, *names], [module, *modules]):
                refused[effective] = (f"{effective} is computed by {tool} from "
                                      f"{' and '.join(stored_names)} before every forward; {fix}")
            continue
        if filtered(names, modules):
            continue
        _check_tie_state([(m, n) for _, m, n in places], names)
        chosen.append((names, [(m, n) for _, m, n in places]))
        if len(names) > 1:
            tied[names[0]] = names[1:]
    for full, module, pname in _stacked_on_several_tensors(model):
        if getattr(module, pname).dim() >= 2 and not filtered([full], [module]):
            chosen.append(([full], [(module, pname)]))   # e.g. weight_norm: masked on top
    for full, module in _frozen_weights(model):
        if not filtered([full], [module]):
            left_out[full] = ("a buffer, not a parameter (frozen, never trained): masks go on "
                              "parameters; register it as nn.Parameter(tensor, "
                              "requires_grad=False) to mask it")
    if refused:
        raise ValueError(
            "mask_layers: nothing masked. " + ". ".join(refused.values())
            + f". Masking the stored tensor underneath would combine two masks and miss "
            f"sparsity={sparsity}. Or leave the layer out: exclude=[{next(iter(refused))!r}]"
        )
    if not chosen:
        raise ValueError(
            f"{type(model).__name__} has no weight to mask (no parameter with at least 2 "
            f"dimensions{' left after include/exclude/embeddings' if left_out or quiet else ''})"
            + (f"; left out: {sorted({**left_out, **quiet})}" if left_out or quiet else "")
        )
    on_meta = [names[0] for names, ((module, pname), *_) in chosen
               if getattr(module, pname).device.type == "meta"]
    if on_meta:
        raise ValueError(
            f"mask_layers: {', '.join(on_meta[:3])}{' ...' if len(on_meta) > 3 else ''} "
            f"{'is' if len(on_meta) == 1 else 'are'} on the meta device, with no values to "
            f"rank and a mask that would be lost when the model is materialized; load the "
            f"weights first (model.to_empty(device=...) and load_state_dict), then mask"
        )
    masks = {}
    for names, places in chosen:  # build every mask before masking anything
        module, pname = places[0]
        masks[names[0]] = builders[how](getattr(module, pname).detach())
    undo = []
    try:
        for names, places in chosen:
            undo.append(_register(places, masks[names[0]]))
    except Exception:
        for step in reversed(undo):
            step()
        raise
    if left_out:
        warnings.warn(
            f"mask_layers left out {len(left_out)} weight(s) with at least 2 dimensions: "
            + "; ".join(f"{k}: {v}" for k, v in left_out.items()), stacklevel=2)
    return MaskedLayers(masks, {**left_out, **quiet}, tied)
