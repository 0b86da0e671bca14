"""maskutils: small, tested helpers for the book "Masking weights in PyTorch".

The masking core (masks, apply, hooks, learnable, swa, train) imports only torch;
``maskutils.plot`` and ``maskutils.widgets`` need matplotlib and ipywidgets and are
imported lazily, so ``import maskutils`` stays fast and works without a display.
"""
from .apply import (MaskedLayers, apply_mask, get_mask, load_dense_state_dict, mask_layers,
                    masked_parameters, remove_mask, remove_masks)
from .data import char_corpus, char_loaders, digits_loaders, reshuffle
from .device import banner, get_device, seed_everything
from .distributed import broadcast_masks, launch, masks_agree
from .hooks import GradientRecorder, MaskHandle, mask_gradients, project_after_step
from .learnable import (apply_learnable_mask, binarize, gate_penalty, gate_sparsity,
                        gate_values, learnable_mask_layers, mask_parameters,
                        weight_parameters)
from .masks import magnitude_mask, nm_mask, random_mask, sparsity
from .models import (CharTransformerLM, DigitsCNN, DigitsLSTM, DigitsMLP, DigitsResNet,
                     digits_mlp)
from .oneshot import (PrunedLayers, input_norms, layer_inputs, one_shot_prune,
                      prunable_weights, sparsegpt_prune, wanda_mask)
from .pruning import gradual_magnitude_prune
from .structured import count_parameters, dead_units, prune_units, shrink
from .report import glue, mean_range
from .swa import check_fixed_masks, fit_swa
from .train import decayed_adam, evaluate, evaluate_loss, fit

__version__ = "0.1.0"

__all__ = [
    "apply_mask", "get_mask", "mask_layers", "masked_parameters", "remove_mask",
    "MaskedLayers", "load_dense_state_dict", "remove_masks",
    "char_corpus", "char_loaders", "digits_loaders", "reshuffle",
    "banner", "get_device", "seed_everything",
    "broadcast_masks", "launch", "masks_agree",
    "GradientRecorder", "MaskHandle", "mask_gradients", "project_after_step",
    "apply_learnable_mask", "binarize", "gate_penalty", "gate_sparsity", "gate_values",
    "learnable_mask_layers", "mask_parameters", "weight_parameters",
    "magnitude_mask", "nm_mask", "random_mask", "sparsity",
    "CharTransformerLM", "DigitsCNN", "DigitsLSTM", "DigitsMLP", "DigitsResNet", "digits_mlp",
    "input_norms", "layer_inputs", "one_shot_prune", "prunable_weights", "sparsegpt_prune",
    "wanda_mask", "PrunedLayers",
    "gradual_magnitude_prune",
    "count_parameters", "dead_units", "prune_units", "shrink",
    "glue", "mean_range",
    "check_fixed_masks", "fit_swa",
    "decayed_adam", "evaluate", "evaluate_loss", "fit",
]
