"""Which model the app runs: command-line options / environment variables -> a loaded MAGEPipeline.

Sources: "default" (the embedded model in assets/default), a local directory in our format, an official
``.pth`` checkpoint (+ ``--vqgan`` tokenizer) or a Hugging Face Hub repo id. A source that fails to load
falls back to the default with a message that the UI shows.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("mage.app")

ENV_MODEL, ENV_VQGAN, ENV_DEVICE = "MAGE_MODEL", "MAGE_VQGAN", "MAGE_DEVICE"


def is_default(source) -> bool:
    return source in (None, "", "default")


def is_local(source) -> bool:
    """True for the default model and anything that exists on disk (no network needed)."""
    return is_default(source) or Path(str(source)).expanduser().exists()


def pick_device(requested: str | None = None) -> tuple[str, str | None]:
    """(device, warning or None). "auto"/None picks CUDA when available, else CPU (MPS only on request:
    the sampler uses float64, which MPS lacks)."""
    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            return "cpu", f"device {requested!r} requested but CUDA is not available; running on CPU"
        try:
            torch.device(requested)
        except RuntimeError:
            return "cpu", f"unknown device {requested!r}; running on CPU"
        return requested, None
    return ("cuda" if torch.cuda.is_available() else "cpu"), None


def load_pipeline(source: str | None = "default", vqgan: str | None = None, device: str | None = None):
    """-> (pipe, message or None). A failing non-default source falls back to the default model and the
    message says why; a failing default raises RuntimeError with a clear sentence."""
    from mage import MAGEPipeline
    from mage.pipeline import DEFAULT_MODEL_DIR

    dev, note = pick_device(device)
    notes = [note] if note else []
    if not is_default(source):
        try:
            pipe = MAGEPipeline.from_pretrained(os.path.expanduser(str(source)), vqgan=vqgan, device=dev)
            return pipe, "; ".join(notes) or None
        except Exception as e:  # any failure: say what happened, run the default model
            msg = (f"Could not load the model {source!r}: {type(e).__name__}: {e}. "
                   "Started on the embedded default model instead.")
            log.warning(msg)
            notes.append(msg)
    try:
        pipe = MAGEPipeline.from_pretrained("default", device=dev)
    except Exception as e:
        raise RuntimeError(f"The embedded default model could not be loaded from {DEFAULT_MODEL_DIR} "
                           f"({type(e).__name__}: {e}). Pass another model with --model DIR "
                           f"(or {ENV_MODEL}=DIR).") from None
    return pipe, "; ".join(notes) or None
