"""Applying a fixed mask to a parameter with ``torch.nn.utils.parametrize``.

After ``apply_mask`` every access to ``module.weight`` computes ``original * mask``, so the
masked entries are zero in the forward pass and autograd gives them zero gradient. The mask
is a buffer (saved in ``state_dict``, moved by ``.to()``) and the original ``Parameter`` object
is kept, so an optimizer built before still trains it.

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

import torch
from torch import nn
from torch.nn.utils import parametrize


class Mask(nn.Module):
    """The parametrization ``weight = original * mask``; the mask is a buffer."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.mask


def _check_module(module) -> None:
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")


def _check_name(module: nn.Module, name: str) -> torch.Tensor:
    """Return the current (effective) tensor ``module.<name>``, or raise a clear error."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'weight', got {name!r}")
    is_param = name in dict(module.named_parameters(recurse=False))
    if not (is_param or parametrize.is_parametrized(module, name)):
        known = sorted(dict(module.named_parameters(recurse=False)))
        if parametrize.is_parametrized(module):
            known += sorted(module.parametrizations.keys())
        raise ValueError(
            f"{type(module).__name__} has no parameter {name!r}; its parameters are {sorted(set(known))}"
        )
    return getattr(module, name)


def _mask_modules(module: nn.Module, name: str) -> list[Mask]:
    if not parametrize.is_parametrized(module, name):
        return []
    return [p for p in module.parametrizations[name] if isinstance(p, Mask)]


def check_mask(mask, like: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """Return ``mask`` as a 0/1 tensor of ``like``'s dtype and device, or raise a clear error."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of 0s and 1s, got {type(mask).__name__}")
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


def apply_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> nn.Module:
    """Mask ``module.<name>``: afterwards it reads ``original * mask`` on every access.

    Masking an already masked parameter intersects the masks. Returns ``module``.

    >>> layer = apply_mask(nn.Linear(2, 1), torch.tensor([[1.0, 0.0]]))
    >>> layer.weight[0, 1].item() == 0
    True
    """
    _check_module(module)
    current = _check_name(module, name)
    mask = check_mask(mask, current)
    existing = _mask_modules(module, name)
    if existing:
        with torch.no_grad():
            existing[-1].mask.mul_(mask)
    else:
        parametrize.register_parametrization(module, name, Mask(mask))
    return module


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


def remove_mask(module: nn.Module, name: str = "weight", bake: bool = True) -> nn.Module:
    """Remove the mask of ``module.<name>`` and leave a plain ``Parameter`` (the same object).

    ``bake=True`` keeps the masked values (the module then loads into the unmasked
    architecture); ``bake=False`` restores the dense original, whatever the optimizer
    did to its masked entries while the mask was on. Returns ``module``.
    """
    _check_module(module)
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
    own_parametrized_class(module)  # copies made by deepcopy share the class
    parametrize.remove_parametrizations(module, name, leave_parametrized=bool(bake))
    return module


def masked_parameters(model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
    """``{original parameter: mask}`` for every parameter of ``model`` masked by ``apply_mask``.

    This is the dict that ``mask_gradients`` and ``project_after_step`` take.
    """
    _check_module(model)
    found = {}
    for sub in model.modules():
        if parametrize.is_parametrized(sub):
            for name, plist in sub.parametrizations.items():
                masks = [p for p in plist if isinstance(p, Mask)]
                if masks:
                    found[plist.original] = masks[-1].mask
    return found


MASKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def mask_layers(model: nn.Module, sparsity: float, how: str = "magnitude",
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Mask the weight of every Linear and Conv layer of ``model`` at ``sparsity`` (layer-wise).

    ``how`` is ``"magnitude"`` (remove the smallest) or ``"random"``. Masks stack on any mask
    already there. Returns ``{layer name: new mask}``.

    >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> sorted(mask_layers(model, 0.5))
    ['0', '2']
    """
    from .masks import check_sparsity, magnitude_mask, random_mask

    _check_module(model)
    sparsity = check_sparsity(sparsity)
    builders = {
        "magnitude": lambda w: magnitude_mask(w, sparsity),
        "random": lambda w: random_mask(w, sparsity, generator=generator),
    }
    if how not in builders:
        raise ValueError(f"how must be one of {sorted(builders)}, got {how!r}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, MASKABLE)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layer to mask")
    masks = {name: builders[how](layer.weight.detach()) for name, layer in layers.items()}
    for name, layer in layers.items():
        apply_mask(layer, masks[name])
    return masks
