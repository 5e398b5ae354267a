"""Load a model for the course: the bundled one (offline, the default), a local folder, or a hub id.

    model = load_model()                         # the course's own model, shipped inside course_utils
    model = load_model("gpt2")                   # GPT-2 small from the Hugging Face hub (needs internet once)
    model = load_model("EleutherAI/pythia-70m", device="cuda", dtype=torch.bfloat16)

Weights are read only from safetensors files, and no code from the hub is ever run.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from course_utils.devices import check_device, get_device
from course_utils.errors import CourseError
from course_utils.families import family_of
from course_utils.hooked_model import HookedModel, use_course_attention

BUNDLED_MODEL = Path(__file__).parent / "bundled_model"


def bundled_checkpoints() -> list[Path]:
    """Folders of the snapshots saved while the bundled model trained, earliest first."""
    return sorted((BUNDLED_MODEL / "checkpoints").glob("step_*"))


def _offline_message(name: str) -> str:
    return (f"Could not reach the Hugging Face hub to download {name!r}: this machine seems to be offline. "
            "Call load_model() with no name for the course's bundled model, which needs no internet.")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection to the hub, so that an offline machine fails in seconds, not after retries."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _is_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a valid repo id, for one
        return False


def _load_config(name: str, local_only: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError) as err:
        text = str(err).lower()
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or any(
            s in text for s in ("connection", "offline", "resolve", "timed out", "couldn't connect", "cannot find the requested files"))
        if offline:
            raise CourseError(_offline_message(name)) from None
        raise CourseError(f"{name!r} is neither a local folder nor a model on the Hugging Face hub; check the "
                          "spelling (for example 'gpt2' or 'EleutherAI/pythia-70m'), or call load_model() with "
                          "no name for the bundled model.") from None


def load_model(name: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None) -> HookedModel:
    """A `HookedModel` for `name` (None: the bundled model), on `device` (default: `get_device()`).

    `dtype` defaults to float32, which every device supports; pass torch.bfloat16 on a GPU to halve memory.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(BUNDLED_MODEL if name is None else name)
    device = get_device() if device is None else check_device(device)
    if name is not None and Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser())
    elif name is None and not (BUNDLED_MODEL / "config.json").exists():
        raise CourseError("The bundled model is missing from this copy of course_utils; reinstall the course "
                          "(`make lab`), or pass a hub id such as 'gpt2'.")
    local_only = name is None or Path(source).is_dir() or not _hub_reachable()
    if local_only and not Path(source).is_dir() and not _is_cached(source):
        raise CourseError(_offline_message(source))
    config = _load_config(source, local_only)
    family = family_of(config.model_type)  # fails early, with the supported families, for other architectures
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if Path(source).resolve().is_relative_to(BUNDLED_MODEL.resolve()):
        hf_logging.disable_progress_bar()  # the bundled model loads in milliseconds: no bar needed
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype or torch.float32, use_safetensors=True, trust_remote_code=False,
            attn_implementation=_course_attention_name(), local_files_only=local_only)
    except OSError as err:
        if "safetensors" in str(err).lower():
            raise CourseError(f"{name!r} has no safetensors weights, and the course loads no other format; "
                              "choose a model that ships .safetensors files.") from None
        raise CourseError(_offline_message(source)) from None
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return HookedModel(model.to(device), tokenizer, family)


def _course_attention_name() -> str:
    from course_utils import attention

    return attention.register()


__all__ = ["load_model", "bundled_checkpoints", "BUNDLED_MODEL", "use_course_attention"]
