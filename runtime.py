"""Where the stages run: the device, its autocast, and one-line errors. Imports no network.

    device = pick_device(args.device)          # cuda, then mps, then cpu; a clear error if absent
    with autocast(device, "bf16"): ...          # bf16 on CUDA, a no-op where it does not pay
    with exit_on(DataError, CheckpointError):   # bad input the user can fix -> `error: ...`, exit 1
"""
from contextlib import contextmanager, nullcontext

import torch


def pick_device(name=None):
    """torch.device(name), or the best one here (cuda, then mps, then cpu). Raises ValueError with a
    one-line fix when the named device does not exist on this machine."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA GPU; use --device cpu (or leave it out)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu (or leave it out)")
    return device


def autocast(device, amp="bf16"):
    """The mixed-precision context of a forward pass: bf16 (or fp16) autocast on CUDA; on other
    devices, and with amp "off", full float32 (CPU autocast is slower for these small convolutions)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device.type, dtype=dtype) if dtype and device.type == "cuda" else nullcontext()


@contextmanager
def exit_on(*errors):
    """Turn the given exceptions (bad input the user can fix; their message says how) into a one-line
    `error: MESSAGE` exit instead of a traceback."""
    try:
        yield
    except errors as e:
        raise SystemExit(f"error: {e}") from None
