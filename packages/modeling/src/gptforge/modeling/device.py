"""Device names: ``auto`` means CUDA, else Apple MPS, else the CPU; any torch device name works.

``resolve_device`` turns a name into the ``torch.device`` this machine has, and refuses a device
that is not present with the fix (``auto``) instead of failing later inside a kernel.
"""

from __future__ import annotations

import torch


def auto_device_name() -> str:
    """What ``auto`` means on this machine: ``cuda``, else ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str | torch.device) -> torch.device:
    """The ``torch.device`` for a name; an unknown or absent device is a one-line ``ValueError``.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (or a ``torch.device``).

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device(auto_device_name())
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            found = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ValueError(
                f"device {name!r} is not present (this machine has {found}); "
                f"pass --device auto (here: {auto_device_name()})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            "device 'mps' is not present (Apple silicon with macOS 12.3+ only); "
            f"pass --device auto (here: {auto_device_name()})"
        )
    return device
