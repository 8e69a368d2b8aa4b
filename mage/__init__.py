"""MAGE Studio core library (no UI code): tokenizer, MAGE ViT, decoding engine, pipeline."""
from .config import MAGEConfig, VQGANConfig, vit_base, vit_large, tiny_compat, PRESETS
from .vqgan import VQGAN
from .model import MAGE
from .sampler import MaskGITSampler, DecodeStep, TorchNoise, OfficialNoise, RecordedNoise, schedule_counts, SCHEDULES
from .checkpoint import (CheckpointError, load_official, load_vqgan, load_native, save_native,
                         to_official_state_dict)
from .pipeline import MAGEPipeline, DecodeResult

__all__ = ["MAGEConfig", "VQGANConfig", "vit_base", "vit_large", "tiny_compat", "PRESETS", "VQGAN", "MAGE",
           "MaskGITSampler", "DecodeStep", "TorchNoise", "OfficialNoise", "RecordedNoise", "schedule_counts",
           "SCHEDULES", "CheckpointError", "load_official", "load_vqgan", "load_native", "save_native",
           "to_official_state_dict", "MAGEPipeline", "DecodeResult"]
__version__ = "0.1.0"
