"""MAGE Studio's Gradio app (thin glue over the ``mage`` library).

    from app import Studio, build_demo, load_pipeline, launch
    pipe, message = load_pipeline("default")
    demo = build_demo(Studio(pipe, message))
    launch(demo, port=7860)
"""
from .loading import load_pipeline, pick_device
from .studio import Studio
from .ui import build_demo, launch

__all__ = ["load_pipeline", "pick_device", "Studio", "build_demo", "launch"]
