"""Analytic FLOP counts (1 multiply-add = 2 FLOPs; matmuls and convolutions only).

MAGE inference step, per image, on the full sequence of L = N + 1 tokens (no token dropping):

    block(d, m)   = 2*L*d*3d (qkv) + 2*L*d*d (proj) + 2*2*L*d*m (fc1, fc2) + 2*2*L*L*d (q.k^T, attn.v)
                  = 8*L*d^2 + 4*L*d*m + 4*L^2*d                      (m = mlp_ratio * d)
    step          = depth * block(D) + 2*L*D*Dd (decoder_embed)
                  + decoder_depth * block(Dd)
                  + 2*L*Dd*D (MLM fc) + 2*L*D*K (MLM logits over the K codebook entries)

``token_logits`` multiplies only by the K codebook rows of the word-embedding table (the training forward
uses the whole vocabulary V = K + 1000 + 1). ViT-B (L=257, D=Dd=768, K=1024): 77.8 GFLOP per step per
image, 5% of it in the attention matrices. LayerNorm, GELU, softmax, embeddings and the sampler are not counted (they are memory-bound and small next to the matmuls).

VQGAN convolutions: 2 * Cin * Cout * k*k * Hout * Wout each (biases, GroupNorm, SiLU, pooling and
nearest upsampling not counted); the quantiser's distance matmul is 2 * h*w * C * n_embed.
The official decoder (256x256 output) is 186.5 GFLOP per image (~2.4 ViT-B steps), the encoder 128.8.
"""
from __future__ import annotations

from mage.config import MAGEConfig, VQGANConfig


def block_flops(L: int, d: int, mlp_ratio: float) -> int:
    m = int(d * mlp_ratio)
    return 8 * L * d * d + 4 * L * d * m + 4 * L * L * d


def attention_flops(L: int, d: int) -> int:
    """The attention-matrix part of a block (q.k^T and attn.v)."""
    return 4 * L * L * d


def mage_step_flops(cfg: MAGEConfig, batch: int = 1) -> int:
    """One inference forward (``token_logits``) of ``batch`` images."""
    L, D, Dd, K = cfg.seq_len, cfg.embed_dim, cfg.decoder_embed_dim, cfg.codebook_size
    f = cfg.depth * block_flops(L, D, cfg.mlp_ratio)
    f += 2 * L * D * Dd
    f += cfg.decoder_depth * block_flops(L, Dd, cfg.mlp_ratio)
    f += 2 * L * Dd * D + 2 * L * D * K
    return batch * f


def mage_step_breakdown(cfg: MAGEConfig) -> dict[str, int]:
    """Per image: where the FLOPs of one step go."""
    L, D, Dd, K = cfg.seq_len, cfg.embed_dim, cfg.decoder_embed_dim, cfg.codebook_size
    attn = cfg.depth * attention_flops(L, D) + cfg.decoder_depth * attention_flops(L, Dd)
    head = 2 * L * Dd * D + 2 * L * D * K
    total = mage_step_flops(cfg)
    return {"total": total, "attention_matrices": attn, "mlm_head": head, "linear_layers": total - attn - head}


def _conv(cin: int, cout: int, k: int, hw: int) -> int:
    return 2 * cin * cout * k * k * hw


def _resblock(cin: int, cout: int, hw: int) -> int:
    f = _conv(cin, cout, 3, hw) + _conv(cout, cout, 3, hw)
    return f + (_conv(cout, cout, 1, hw) if cin != cout else 0)


def vqgan_decode_flops(vq: VQGANConfig, grid: int, batch: int = 1) -> int:
    chans = [vq.ch * m for m in vq.ch_mult]
    side = grid
    c = chans[-1]
    f = _conv(vq.z_channels, c, 3, side * side) + 2 * _resblock(c, c, side * side)
    for i in reversed(range(len(chans))):
        for _ in range(vq.num_res_blocks):
            f += _resblock(c, chans[i], side * side)
            c = chans[i]
        if i != 0:
            side *= 2
            f += _conv(c, c, 3, side * side)
    f += _conv(c, vq.out_ch, 3, side * side)
    return batch * f


def vqgan_encode_flops(vq: VQGANConfig, size: int, batch: int = 1) -> int:
    chans = [vq.ch * m for m in vq.ch_mult]
    side = size
    f = _conv(vq.in_channels, vq.ch, 3, side * side)
    c = vq.ch
    for i, cout in enumerate(chans):
        for _ in range(vq.num_res_blocks):
            f += _resblock(c, cout, side * side)
            c = cout
        if i != len(chans) - 1:
            side //= 2
    f += 2 * _resblock(c, c, side * side) + _conv(c, vq.z_channels, 1, side * side)
    f += 2 * side * side * vq.z_channels * vq.n_embed  # nearest-code search
    return batch * f
