"""Configuration objects for the VQGAN tokenizer and the MAGE transformer.

Everything that the official code hard-codes (image size, token grid, vocabulary layout, special ids)
is derived from these two dataclasses, so the official 256px/16x16 models and our small ones share
one implementation.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class VQGANConfig:
    """MaskGIT-style VQGAN (no attention, avg-pool downsampling). Defaults = official tokenizer."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    n_embed: int = 1024
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    beta: float = 0.25  # commitment weight of the VQ loss

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)

    @property
    def embed_dim(self) -> int:
        # the official model has no quant_conv: codebook vectors live in the z space
        return self.z_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQGANConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown VQGANConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class MAGEConfig:
    """MAGE ViT + its tokenizer. Defaults = official ViT-B (`mage_vit_base_patch16`).

    Vocabulary layout (as in the official checkpoints): ids ``0..codebook_size-1`` are VQGAN codes,
    the next ``num_class_slots`` ids are class slots (class ``c`` -> ``codebook_size + c``), the id
    ``codebook_size + 76`` (1100 for the official model) is the "no class" id placed at position 0, and
    the last id is the mask token (2024).
    """

    img_size: int = 256
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 768
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    mlm_ln_eps: float = 1e-5
    num_class_slots: int = 1000
    no_class_offset: int = 76  # 1100 - 1024 in the official model
    num_classes: int = 0  # >0: class-conditional training/generation through the class slot
    drop_rate: float = 0.1
    attn_drop_rate: float = 0.1
    label_smoothing: float = 0.1
    mask_ratio_min: float = 0.5
    mask_ratio_max: float = 1.0
    mask_ratio_mu: float = 0.55
    mask_ratio_std: float = 0.25
    drop_ratio: float = 0.5  # fraction of tokens dropped (not even fed as [MASK]) in training
    class_drop_prob: float = 0.1  # training: probability of replacing the class by "no class"
    vqgan: VQGANConfig = field(default_factory=VQGANConfig)

    def __post_init__(self):
        if isinstance(self.vqgan, dict):
            self.vqgan = VQGANConfig.from_dict(self.vqgan)
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of the tokenizer's "
                             f"downsampling factor {self.patch_size}")
        if self.num_classes > self.num_class_slots:
            raise ValueError("num_classes exceeds num_class_slots")
        if 0 < self.num_classes and self.no_class_offset < self.num_classes:
            raise ValueError("the 'no class' id collides with a real class id; raise no_class_offset")
        if self.embed_dim % self.num_heads or self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError("embedding widths must be divisible by the number of heads")

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self.vqgan.downsample

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2

    @property
    def seq_len(self) -> int:
        return self.num_tokens + 1

    @property
    def codebook_size(self) -> int:
        return self.vqgan.n_embed

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_class_slots + 1

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size - 1

    @property
    def no_class_id(self) -> int:
        return self.codebook_size + self.no_class_offset

    def class_token_id(self, c: int) -> int:
        if not 0 <= c < self.num_classes:
            raise ValueError(f"class {c} out of range: this model has {self.num_classes} classes")
        return self.codebook_size + c

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "vqgan"}
        d["vqgan"] = self.vqgan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MAGEConfig":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown MAGEConfig fields: {sorted(unknown)}")
        d["vqgan"] = VQGANConfig.from_dict(d.get("vqgan", {}))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **kw) -> "MAGEConfig":
        return dataclasses.replace(self, **kw)


def vit_base(**kw) -> MAGEConfig:
    """Official `mage_vit_base_patch16`: 12x768 encoder (12 heads), 8x768 decoder (16 heads)."""
    return MAGEConfig(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=768, decoder_depth=8,
                      decoder_num_heads=16, **kw)


def vit_large(**kw) -> MAGEConfig:
    """Official `mage_vit_large_patch16`: 24x1024 encoder, 8x1024 decoder, 16 heads both."""
    return MAGEConfig(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=1024, decoder_depth=8,
                      decoder_num_heads=16, **kw)


def tiny_compat() -> MAGEConfig:
    """The tiny configuration of ../shared/compat (official layout, small widths)."""
    return MAGEConfig(embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                      decoder_num_heads=2,
                      vqgan=VQGANConfig(ch=32, ch_mult=(1, 1, 1, 1, 2), z_channels=32, n_embed=1024))


PRESETS = {"vit_base": vit_base, "vit_large": vit_large, "tiny_compat": tiny_compat}
