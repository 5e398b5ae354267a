"""Load a model for the course: a bundled one (offline), a local folder, or a hub id.

    model = load_model()                         # the course's own 2-layer model, shipped inside course_utils
    model = load_model("course-4l")              # its 4-layer sibling (same tokenizer), also bundled
    model = load_model("gpt2")                   # GPT-2 small from the Hugging Face hub (needs internet once)
    model = load_model("EleutherAI/pythia-70m", device="cuda", dtype=torch.bfloat16)

Weights are read only from safetensors files, and no code from the hub is ever run.
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path

import torch

from course_utils.devices import check_device, get_device
from course_utils.errors import CourseError
from course_utils.families import family_of
from course_utils.hooked_model import HookedModel, use_course_attention

BUNDLED_MODEL = Path(__file__).parent / "bundled_model"
# The models the course grows itself and ships, by the short names load_model takes.
BUNDLED_MODELS = {"course-2l": BUNDLED_MODEL, "course-4l": Path(__file__).parent / "bundled_model_4l"}
DEFAULT_MODEL = "course-2l"


def bundled_checkpoints(name: str = DEFAULT_MODEL) -> list[Path]:
    """Folders of the snapshots saved while a bundled model trained, earliest first."""
    return sorted((_bundled_folder(name) / "checkpoints").glob("step_*"))


def _bundled_folder(name: str) -> Path:
    if name not in BUNDLED_MODELS:
        raise CourseError(f"{name!r} is not a bundled model; the bundled models are {_bundled_names()}.")
    return BUNDLED_MODELS[name]


def _bundled_names() -> str:
    return ", ".join(f"{n!r}" + (" (the default)" if n == DEFAULT_MODEL else "") for n in BUNDLED_MODELS)


def _offline_message(name: str) -> str:
    return (f"Could not reach the Hugging Face hub to download {name!r}: this machine seems to be offline. "
            f"Call load_model() with no name, or with the name of a bundled model ({_bundled_names()}), "
            "which needs no internet.")


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
        raise CourseError(f"{name!r} is neither a bundled model, a local folder nor a model on the Hugging Face "
                          f"hub; check the spelling (bundled: {_bundled_names()}; on the hub, for example 'gpt2' "
                          "or 'EleutherAI/pythia-70m').") from None


def load_model(name: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None) -> HookedModel:
    """A `HookedModel` for `name`: None or a bundled model's name ("course-2l", "course-4l"), a local
    folder, or a hub id; on `device` (default: `get_device()`).

    `dtype` defaults to float32, which every device supports; pass torch.bfloat16 on a GPU to halve memory.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bundled = name is None or str(name) in BUNDLED_MODELS
    source = str(BUNDLED_MODELS[DEFAULT_MODEL if name is None else str(name)] if bundled else name)
    device = get_device() if device is None else check_device(device)
    if bundled and not (Path(source) / "config.json").exists():
        raise CourseError(f"The bundled model {name or DEFAULT_MODEL!r} is missing from this copy of course_utils; "
                          "reinstall the course (`make lab`), or pass a hub id such as 'gpt2'.")
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser())
    elif not bundled and (close := difflib.get_close_matches(source.lower(), list(BUNDLED_MODELS), n=1, cutoff=0.75)):
        raise CourseError(f"{source!r} is not a bundled model: did you mean {close[0]!r}? The bundled models are "
                          f"{_bundled_names()}.")
    local_only = bundled or Path(source).is_dir() or not _hub_reachable()
    if local_only and not Path(source).is_dir() and not _is_cached(source):
        raise CourseError(_offline_message(source))
    config = _load_config(source, local_only)
    family = family_of(config.model_type)  # fails early, with the supported families, for other architectures
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if any(Path(source).resolve().is_relative_to(p.resolve()) for p in BUNDLED_MODELS.values()):
        hf_logging.disable_progress_bar()  # the bundled models load in milliseconds: no bar needed
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


__all__ = ["load_model", "bundled_checkpoints", "BUNDLED_MODEL", "BUNDLED_MODELS", "use_course_attention"]
