"""Device and dtype resolution: one place that turns user input into torch objects."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["DTYPE_NAMES", "resolve_device", "resolve_devices", "resolve_dtype"]

#: Accepted dtype spellings and what they mean.
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device to run on.

    ``None`` picks the best available: ``cuda``, then ``mps``, then ``cpu``.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(
                f"unknown device {device!r}: expected one of {', '.join(_DEVICE_TYPES)} "
                "(optionally with an index, e.g. 'cuda:1') or None to pick automatically"
            ) from exc
    else:
        raise TypeError(f"device must be a str, torch.device or None, got {type(device).__name__}")
    if resolved.type not in _DEVICE_TYPES:
        raise ValueError(f"unsupported device {str(resolved)!r}: expected one of {', '.join(_DEVICE_TYPES)}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(resolved)!r} was asked for but CUDA is not available here; use 'cpu'")
    return resolved


def resolve_devices(device: str | torch.device | Sequence[str | torch.device] | None = None) -> list[torch.device]:
    """Return the devices to run on: one for a str, ``torch.device`` or None, else one per entry.

    Every entry of a list must be of one type (all ``cuda``, or all ``cpu``...); an entry may
    repeat (two replicas on one device share its weights). A bare ``"cuda"`` in a list means
    the current CUDA device.

    >>> resolve_devices(["cpu", "cpu"])
    [device(type='cpu'), device(type='cpu')]
    >>> resolve_devices("cpu")
    [device(type='cpu')]
    """
    if device is None or isinstance(device, (str, torch.device)):
        return [resolve_device(device)]
    if not isinstance(device, Sequence):
        raise TypeError(f"device must be a str, torch.device, a list of them or None, got {type(device).__name__}")
    if not device:
        raise ValueError("device is an empty list: name at least one device, e.g. ['cuda:0', 'cuda:1']")
    devices: list[torch.device] = []
    for entry in device:
        if entry is None or not isinstance(entry, (str, torch.device)):
            raise TypeError(f"each device in the list must be a str or torch.device, got {entry!r}")
        resolved = resolve_device(entry)
        if resolved.type == "cuda" and resolved.index is None and len(device) > 1:
            resolved = torch.device("cuda", torch.cuda.current_device())
        devices.append(resolved)
    types = sorted({d.type for d in devices})
    if len(types) > 1:
        raise ValueError(
            f"the devices {[str(d) for d in devices]} mix types ({', '.join(types)}): list devices of one type, "
            "e.g. ['cuda:0', 'cuda:1']"
        )
    return devices


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Return the compute dtype: float16 on CUDA and float32 elsewhere unless one is given.

    >>> resolve_dtype("bf16", torch.device("cpu"))
    torch.bfloat16
    >>> resolve_dtype(None, torch.device("cpu"))
    torch.float32
    """
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise ValueError(f"unsupported dtype {dtype}: expected torch.float32, torch.float16 or torch.bfloat16")
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPE_NAMES)} or a torch.dtype")
        return DTYPE_NAMES[key]
    raise TypeError(f"dtype must be a str, torch.dtype or None, got {type(dtype).__name__}")
