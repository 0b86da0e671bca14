"""Where tensors live, and reproducible randomness.

>>> from maskutils import get_device, seed_everything
>>> device = get_device()          # cuda, then mps, then cpu
>>> seed_everything(0)
0
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

_ENV = "MASKUTILS_DEVICE"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def get_device() -> torch.device:
    """Return the best available device: CUDA, then Apple MPS, then the CPU.

    Set the environment variable ``MASKUTILS_DEVICE`` (for example ``cpu``) to override.

    >>> get_device().type in {"cuda", "mps", "cpu"}
    True
    """
    wanted = os.environ.get(_ENV, "").strip()
    if wanted:
        try:
            device = torch.device(wanted)
        except RuntimeError as err:
            raise ValueError(
                f"{_ENV}={wanted!r} is not a device torch knows; use cpu, cuda, cuda:0 or mps"
            ) from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{_ENV}={wanted!r} but CUDA is not available; unset it or use cpu")
        if device.type == "mps" and not _mps_available():
            raise ValueError(f"{_ENV}={wanted!r} but MPS is not available; unset it or use cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> int:
    """Seed Python's, NumPy's and torch's generators (all devices); return the seed.

    >>> seed_everything(1)
    1
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    seed = int(seed)  # random.seed refuses NumPy integers
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def banner(device: torch.device | str | None = None) -> str:
    """One line naming the device and the versions, for the top of every chapter.

    >>> banner("cpu").startswith("device: cpu")
    True
    """
    import platform

    from . import __version__

    device = torch.device(device) if device is not None else get_device()
    where = str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    elif device.type == "cpu":
        where += f" ({torch.get_num_threads()} threads)"
    return (f"device: {where} | torch {torch.__version__} | maskutils {__version__} "
            f"| python {platform.python_version()}")
