"""Where tensors live: pick the best available device, or the one the learner asked for."""

from __future__ import annotations

import os

import torch

from course_utils.errors import CourseError


def get_device() -> torch.device:
    """CUDA if present, then Apple's MPS, then the CPU; `COURSE_DEVICE=cpu` (say) overrides."""
    wanted = os.environ.get("COURSE_DEVICE", "").strip()
    if wanted:
        return check_device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(device: str | torch.device) -> torch.device:
    """Turn `device` into a torch.device, saying what to do if it is not available here."""
    try:
        device = torch.device(device)
    except RuntimeError:
        raise CourseError(f"{device!r} is not a device name; use 'cpu', 'cuda' or 'mps'.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CourseError("No CUDA GPU is available here; use device='cpu' (every notebook runs on a CPU), "
                          "or on Colab choose Runtime → Change runtime type → GPU.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CourseError("Apple's MPS backend is not available here; use device='cpu'.")
    return device
