"""Learnable masks: a gate in [0, 1] per weight, trained with the weights, then binarized.

``apply_learnable_mask(layer)`` makes ``layer.weight`` read ``original * gate(logits)`` on every
access (with ``torch.nn.utils.parametrize``, like ``apply_mask``). The logits are an
``nn.Parameter`` of the parametrization module, so the optimizer trains them; a penalty on the
gates (``gate_penalty``) makes the mask sparse, and ``binarize`` turns the learned gates into the
fixed 0/1 masks of ``apply_mask``. Three gates:

- ``"sigmoid"``: ``gate = sigmoid(logits)``, soft: no gate is ever exactly 0 or 1.
- ``"ste"``: ``gate = 1 if sigmoid(logits) >= 0.5 else 0`` in the forward pass, with the
  gradient of ``sigmoid(logits)`` in the backward pass (a straight-through estimator,
  Bengio et al., 2013). The network always computes with the binary mask it will be left with.
- ``"hard_concrete"``: the L0 gate of Louizos, Welling and Kingma (2018), a stretched and
  clipped binary concrete variable. Stochastic in training mode (one sample per forward pass),
  deterministic in eval mode, where ``gate = clip(sigmoid(logits) * (zeta - gamma) + gamma, 0, 1)``
  is exactly 0 or 1 for most logits.

Two structures: ``structure="weight"`` (the default) gives every weight its own gate;
``structure="unit"`` gives one gate per output row (a hidden unit of a ``Linear``, an output
channel of a convolution), shared by the whole row, with the same penalties counted per
unit. Closed unit gates are whole zero rows, which ``maskutils.shrink`` cuts out.

The logits and the weights belong in two optimizer groups (``mask_parameters`` and
``weight_parameters``): the logits usually need a much larger learning rate.

As with ``apply_mask``, ``layer.weight`` read outside a forward pass is a computed tensor
that refuses in-place writes (``nn.init.*``, ``reset_parameters()``): write into
``layer.parametrizations.weight.original`` instead. The gate is a product: a closed gate
(exactly 0) still passes the weight's value to its logit's gradient, which is how it reopens.

The logits are saved in ``state_dict`` (``<layer>.parametrizations.weight.0.logits``, next to
``...weight.original``), so a state dict loads into a model given learnable masks the same
way; ``copy.deepcopy`` and ``.to()`` work as for any module. ``gate_values`` and
``gate_sparsity`` read the deterministic gates whatever the mode: prefer them to
``sparsity(model)``, which reads ``module.weight`` and so, for hard-concrete gates in training
mode, a random sample.

>>> import torch
>>> from torch import nn
>>> from maskutils.learnable import (apply_learnable_mask, binarize, gate_penalty,
...                                  mask_parameters, weight_parameters)
>>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
>>> for layer in (model[0], model[2]):
...     _ = apply_learnable_mask(layer, gate="sigmoid", init_logit=3.0)
>>> optimizer = torch.optim.Adam([{"params": weight_parameters(model), "lr": 1e-3},
...                               {"params": mask_parameters(model), "lr": 0.1}])
>>> loss = model(torch.randn(5, 4)).pow(2).mean() + 1e-3 * gate_penalty(model)
>>> loss.backward(); optimizer.step()
>>> _ = binarize(model)              # fixed 0/1 masks from now on (gate >= 0.5 is kept)
>>> from maskutils import get_mask
>>> get_mask(model[0]).shape
torch.Size([3, 4])
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from torch.nn.utils import parametrize

from .apply import (MASKABLE, Mask, _check_module, _check_name, _guard_computed,
                    _unregister_last, apply_mask, own_parametrized_class)

__all__ = [
    "GATES", "STRUCTURES", "LearnableGate", "apply_learnable_mask", "learnable_mask_layers", "gate_values",
    "gate_sparsity", "gate_penalty", "mask_parameters", "weight_parameters", "binarize",
]

GATES = ("sigmoid", "ste", "hard_concrete")
STRUCTURES = ("weight", "unit")

# Hard-concrete constants from Louizos et al. (2018): temperature and stretch interval.
BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1


class LearnableGate(nn.Module):
    """The parametrization ``weight = original * gate(logits)``; ``logits`` is a Parameter.

    Created by ``apply_learnable_mask``; use that rather than this class directly.
    """

    def __init__(self, like: torch.Tensor, gate: str = "sigmoid", init_logit: float = 3.0,
                 structure: str = "weight"):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {list(GATES)}, got {gate!r}")
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {list(STRUCTURES)}, got {structure!r}")
        self.gate = gate
        self.structure = structure
        self.shape = tuple(like.shape)
        like = like.detach()
        if structure == "unit":  # one logit per output row, broadcast over the row
            like = like[(slice(None),) + (slice(0, 1),) * (like.dim() - 1)]
        self.logits = nn.Parameter(torch.full_like(like, float(init_logit)))

    def extra_repr(self) -> str:
        return (f"gate={self.gate!r}, structure={self.structure!r}, "
                f"shape={tuple(self.logits.shape)}")

    def full(self) -> torch.Tensor:
        """``values()`` expanded to the weight's shape: one gate value per weight."""
        return self.values().expand(self.shape)

    def values(self) -> torch.Tensor:
        """The deterministic gate values in [0, 1] (what eval mode uses), with gradient."""
        s = torch.sigmoid(self.logits)
        if self.gate == "sigmoid":
            return s
        if self.gate == "ste":
            hard = (s >= 0.5).to(s.dtype)
            return hard + (s - s.detach())  # forward: exactly hard; backward: d sigmoid
        return torch.clamp(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def sample(self) -> torch.Tensor:
        """The gates the forward pass uses: a fresh random sample for hard-concrete gates in
        training mode, ``values()`` otherwise."""
        if self.gate != "hard_concrete" or not self.training:
            return self.values()
        tiny = torch.finfo(self.logits.dtype).eps
        u = torch.rand_like(self.logits).clamp(tiny, 1.0 - tiny)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.logits) / BETA)
        return torch.clamp(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def penalty(self) -> torch.Tensor:
        """Sum of the gate values (sigmoid, ste), or the expected number of non-zero gates
        (hard_concrete, the L0 penalty of Louizos et al.)."""
        if self.gate == "hard_concrete":
            return torch.sigmoid(self.logits - BETA * math.log(-GAMMA / ZETA)).sum()
        return self.values().sum()

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # a product, not a selection: a closed gate still passes the weight's value to the
        # logit's gradient (d weight / d gate = original), which is how a gate reopens
        what = getattr(self, "_what", ("weight", "original * gate", "layer with a learnable mask"))
        return _guard_computed(original * self.sample(), what)


def _gates_of(module: nn.Module, name: str) -> list[LearnableGate]:
    if not parametrize.is_parametrized(module, name):
        return []
    return [p for p in module.parametrizations[name] if isinstance(p, LearnableGate)]


def _learnable(model: nn.Module) -> list[tuple[str, nn.Module, str, LearnableGate]]:
    """``(qualified name, module, tensor name, gate)`` for every learnable mask in ``model``."""
    found = []
    for prefix, sub in model.named_modules():
        if parametrize.is_parametrized(sub):
            for name in sub.parametrizations.keys():
                for gate in _gates_of(sub, name):
                    found.append((f"{prefix}.{name}" if prefix else name, sub, name, gate))
    return found


def _require_learnable(model: nn.Module, what: str):
    _check_module(model)
    found = _learnable(model)
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no learnable mask, so there is nothing to {what}; "
            "call apply_learnable_mask(layer) (or learnable_mask_layers(model)) first"
        )
    return found


def _check_init_logit(init_logit) -> float:
    if isinstance(init_logit, bool) or not isinstance(init_logit, numbers.Real):
        raise TypeError(f"init_logit must be a real number (e.g. 3.0), got {init_logit!r}")
    value = float(init_logit)
    if not math.isfinite(value):
        raise ValueError(
            f"init_logit must be finite, got {value}; sigmoid(3.0) = 0.95 is a good start")
    return value


def _check_gate(gate) -> str:
    if gate not in GATES:
        raise ValueError(f"gate must be one of {list(GATES)}, got {gate!r}")
    return gate


def apply_learnable_mask(module: nn.Module, name: str = "weight", gate: str = "sigmoid",
                         init_logit: float = 3.0, structure: str = "weight") -> nn.Module:
    """Give ``module.<name>`` a learnable mask: it then reads ``original * gate(logits)``.

    - ``gate``: ``"sigmoid"``, ``"ste"`` or ``"hard_concrete"`` (see the module docstring).
    - ``init_logit``: the initial value of every logit. The default 3.0 opens every gate
      (``sigmoid(3) = 0.95``; hard-concrete and straight-through gates start at exactly 1), so
      training starts from the dense model and the penalty closes the gates that are not needed.
    - ``structure``: ``"weight"``, one gate per weight; or ``"unit"``, one gate per output
      row (logits of shape ``(rows, 1, ...)``, broadcast over the row), so that a closed gate
      removes a whole hidden unit. The penalties then count units, not weights.

    The logits are ``module.parametrizations.<name>[i].logits``, a Parameter of the weight's
    shape (or one per row), dtype and device. A fixed mask already on the parameter
    (``apply_mask``) stays and multiplies with the gates. Returns ``module``.

    >>> layer = apply_learnable_mask(nn.Linear(3, 2), gate="ste", init_logit=1.0)
    >>> bool(torch.equal(layer.weight, layer.parametrizations.weight.original))  # all gates open
    True
    >>> rows = apply_learnable_mask(nn.Linear(3, 2), gate="hard_concrete", structure="unit")
    >>> tuple(rows.parametrizations.weight[0].logits.shape)
    (2, 1)
    """
    _check_module(module)
    current = _check_name(module, name)
    gate = _check_gate(gate)
    init_logit = _check_init_logit(init_logit)
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be 'weight' (one gate per weight) or 'unit' (one "
                         f"gate per output row), got {structure!r}")
    _check_gatable(module, name, current, structure)
    _register_gate(module, name, current, gate, init_logit, structure)
    return module


def _check_gatable(module: nn.Module, name: str, current: torch.Tensor, structure: str) -> None:
    """Refuse what ``apply_learnable_mask`` cannot gate, before anything changes."""
    kind = type(module).__name__
    if current.device.type == "meta":
        raise ValueError(
            f"{kind}.{name} is on the meta device, so it has no values yet; gates made there "
            "would be lost when the model is materialized (to_empty). Load the weights "
            "first, then add learnable masks")
    if not current.is_floating_point():
        raise TypeError(f"{kind}.{name} has dtype {current.dtype}; "
                        "a learnable mask needs a floating-point parameter")
    if structure == "unit" and current.dim() < 1:
        raise ValueError(f"{kind}.{name} is a scalar; unit gates need rows")
    if _gates_of(module, name):
        raise ValueError(
            f"{kind}.{name} already has a learnable mask; "
            "binarize(model) or torch.nn.utils.parametrize.remove_parametrizations it first"
        )


def _register_gate(module, name, current, gate, init_logit, structure) -> None:
    owner = parametrize.type_before_parametrizations(module).__name__
    learnable = LearnableGate(current, gate, init_logit, structure)
    learnable._what = (name, "original * gate", f"{owner} with a learnable mask")
    parametrize.register_parametrization(module, name, learnable)


def learnable_mask_layers(model: nn.Module, gate: str = "sigmoid",
                          init_logit: float = 3.0) -> list[str]:
    """``apply_learnable_mask`` on the weight of every Linear and Conv layer of ``model``.

    Returns the names of the layers it masked.

    >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> learnable_mask_layers(model, gate="hard_concrete")
    ['0', '2']
    """
    _check_module(model)
    gate = _check_gate(gate)
    init_logit = _check_init_logit(init_logit)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MASKABLE)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layer to mask")
    taken = [n for n, m in layers.items() if _gates_of(m, "weight")]
    if taken:
        raise ValueError(f"layers {taken} already have a learnable mask; binarize(model) first")
    weights = {}
    for layer_name, layer in layers.items():  # check every layer before gating any
        try:
            weights[layer_name] = _check_name(layer, "weight")
            _check_gatable(layer, "weight", weights[layer_name], "weight")
        except (TypeError, ValueError) as err:
            raise type(err)(f"learnable_mask_layers: nothing changed; layer {layer_name!r}: "
                            f"{err}") from None
    done = []
    try:
        for layer_name, layer in layers.items():
            order = list(layer._parameters)
            _register_gate(layer, "weight", weights[layer_name], gate, init_logit, "weight")
            done.append((layer, order))
    except Exception:
        for layer, order in reversed(done):  # all or nothing: undo exactly
            _unregister_last(layer, "weight")
            layer._parameters = {k: layer._parameters[k] for k in order
                                 if k in layer._parameters} | layer._parameters
        raise
    return list(layers)


def gate_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"layer.weight": gates}``: the current deterministic gate values, detached, in [0, 1].

    Deterministic means what eval mode uses (no hard-concrete sampling), whatever the model's
    mode. Use it for histograms and for counting closed gates. Unit gates
    (``structure="unit"``) are expanded to the weight's shape: every weight of a row shows
    its row's gate.

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> _ = learnable_mask_layers(model, init_logit=0.0)
    >>> gate_values(model)["0.weight"]
    tensor([[0.5000, 0.5000],
            [0.5000, 0.5000]])
    """
    found = _require_learnable(model, "read")
    with torch.no_grad():
        return {qualified: g.full().detach().clone() for qualified, _, _, g in found}


def gate_sparsity(model: nn.Module, threshold: float = 0.5) -> float:
    """The fraction of learnable gates that ``binarize(model, threshold)`` would close
    (deterministic gate value below ``threshold``), over all learnable masks of ``model``.

    It is the sparsity the model will have after ``binarize`` (when no fixed mask was there
    before), measured without binarizing: use it to follow sparsity during training.

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> _ = learnable_mask_layers(model, init_logit=-1.0)
    >>> gate_sparsity(model)
    1.0
    """
    threshold = _check_threshold(threshold)
    closed = total = 0
    for gates in gate_values(model).values():
        closed += int((gates < threshold).sum())
        total += gates.numel()
    return closed / total


def gate_penalty(model: nn.Module) -> torch.Tensor:
    """The sparsity penalty of all learnable masks of ``model``, a scalar with gradient.

    For ``sigmoid`` and ``ste`` gates: the sum of all gate values (their L1 norm, since gates
    are non-negative), so ``lam * gate_penalty(model)`` charges ``lam`` per open gate, as
    the article's ``lam * sum(|mask|)`` does per logit. For ``hard_concrete`` gates: the
    expected number of non-zero gates (the L0 penalty of Louizos et al., 2018). Use it as
    ``fit(..., penalty=lambda m: lam * gate_penalty(m))``. A unit gate
    (``structure="unit"``) is one gate, so it counts once per unit, not once per weight.

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> _ = learnable_mask_layers(model, gate="ste")
    >>> gate_penalty(model).item()        # four open gates
    4.0
    """
    found = _require_learnable(model, "penalize")
    total = None
    for _, _, _, g in found:
        total = g.penalty() if total is None else total + g.penalty()
    return total


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The logits of every learnable mask of ``model``: one optimizer group.

    Together with ``weight_parameters(model)`` it covers ``model.parameters()`` without overlap.

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> _ = learnable_mask_layers(model)
    >>> [tuple(p.shape) for p in mask_parameters(model)]
    [(2, 2)]
    """
    found = _require_learnable(model, "optimize")
    return [g.logits for _, _, _, g in found]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` that is not a mask logit (weights, biases, ...): the other
    optimizer group. On a model without learnable masks it is ``list(model.parameters())``.

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> _ = learnable_mask_layers(model)
    >>> [tuple(p.shape) for p in weight_parameters(model)]
    [(2,), (2, 2)]
    """
    _check_module(model)
    logits = {id(g.logits) for _, _, _, g in _learnable(model)}
    return [p for p in model.parameters() if id(p) not in logits]


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a number in (0, 1), got {threshold!r}")
    value = float(threshold)
    if math.isnan(value) or not 0.0 < value < 1.0:
        raise ValueError(
            f"threshold must be strictly between 0 and 1, got {value}; "
            "0 would keep every weight and 1 would keep none (0.5 is the usual choice)"
        )
    return value


def binarize(model: nn.Module, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Turn every learnable mask of ``model`` into a fixed 0/1 mask; returns ``{name: mask}``.

    A weight is **kept when its deterministic gate value is >= threshold** (``gate_values``):
    for sigmoid and hard-concrete gates and the default 0.5 that is ``logit >= 0``; a
    straight-through gate keeps exactly the weights it already computed with. The learnable
    parametrization is removed, leaving the raw weight (the same ``Parameter`` object, so an
    optimizer built before keeps training it) under ``apply_mask(module, mask)``. A fixed mask
    that was already there is intersected with the new one. Afterwards the effective weight is
    ``original * mask``: soft gate values between the threshold and 1 are rounded up to 1.

    Validates everything before changing anything: on error the model is left as it was.

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> _ = learnable_mask_layers(model)
    >>> with torch.no_grad():
    ...     logits = model[0].parametrizations.weight[0].logits
    ...     _ = logits.copy_(torch.tensor([[1.0, -1.0], [0.0, -2.0]]))
    >>> binarize(model)["0.weight"]
    tensor([[1., 0.],
            [1., 0.]])
    """
    threshold = _check_threshold(threshold)
    found = _require_learnable(model, "binarize")
    plans = []
    for qualified, module, name, gate in found:
        others = [p for p in module.parametrizations[name]
                  if not isinstance(p, (LearnableGate, Mask))]
        if others:
            kinds = ", ".join(type(p).__name__ for p in others)
            raise ValueError(
                f"{qualified} also has other parametrizations ({kinds}); binarize only knows how "
                "to replace learnable gates and fixed masks; remove the others first"
            )
        with torch.no_grad():
            keep = (gate.full() >= threshold).to(gate.logits.dtype).contiguous()
            for fixed in module.parametrizations[name]:
                if isinstance(fixed, Mask):
                    keep = keep * fixed.mask
        plans.append((qualified, module, name, keep))
    masks = {}
    for qualified, module, name, keep in plans:
        own_parametrized_class(module)  # copies made by deepcopy share the class
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        apply_mask(module, keep, name=name)
        masks[qualified] = keep
    return masks
