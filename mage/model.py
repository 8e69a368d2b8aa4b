"""The MAGE ViT (Li et al., CVPR 2023) with the official state-dict key names.

Parameters that exist in official checkpoints but are never used in the forward pass (``cls_token``,
``pos_embed``, ``mask_token``, ``decoder_pos_embed``, ``patch_embed.*``, ``decoder_pred.*``) are not
modules here; :mod:`mage.checkpoint` recreates them when writing an official-format checkpoint and
ignores them when reading one.

Sequence layout: position 0 is the class slot (the "no class" id, or a class id for class-conditional
models), positions 1..N are the row-major token grid.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MAGEConfig
from .masking import random_masks, sample_mask_ratio


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth (used by fine-tuning; 0 in pre-training)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, drop=0.0, attn_drop=0.0, eps=1e-6, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokenEmbedding(nn.Module):
    """BERT-style embedding: LayerNorm(word[ids] + learned position), then dropout."""

    def __init__(self, vocab_size: int, seq_len: int, dim: int, eps: float, drop: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(seq_len, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(drop)
        self.register_buffer("position_ids", torch.arange(seq_len).unsqueeze(0), persistent=True)

    def forward(self, ids):
        pos = self.position_embeddings(self.position_ids[:, : ids.shape[1]])
        return self.dropout(self.LayerNorm(self.word_embeddings(ids) + pos))


class MlmLayer(nn.Module):
    """Linear -> GELU -> LayerNorm(eps 1e-5) -> product with the (detached) word-embedding table + bias."""

    def __init__(self, dec_dim: int, dim: int, vocab_size: int, eps: float):
        super().__init__()
        self.fc = nn.Linear(dec_dim, dim)
        self.ln = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(1, 1, vocab_size))

    def forward(self, x, word_embeddings: torch.Tensor, n: int | None = None):
        x = self.ln(F.gelu(self.fc(x)))
        return x @ word_embeddings.detach().t() + self.bias[..., :n]


class MAGE(nn.Module):
    def __init__(self, config: MAGEConfig, drop_path: float = 0.0):
        super().__init__()
        self.config = c = config
        D, Dd, eps = c.embed_dim, c.decoder_embed_dim, c.norm_eps
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len, Dd))
        self.token_emb = TokenEmbedding(c.vocab_size, c.seq_len, D, eps, c.drop_rate)
        dpr = [drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
        self.blocks = nn.ModuleList(
            Block(D, c.num_heads, c.mlp_ratio, c.drop_rate, c.attn_drop_rate, eps, dpr[i]) for i in range(c.depth))
        self.norm = nn.LayerNorm(D, eps=eps)
        self.decoder_embed = nn.Linear(D, Dd)
        self.decoder_blocks = nn.ModuleList(
            Block(Dd, c.decoder_num_heads, c.mlp_ratio, c.drop_rate, c.attn_drop_rate, eps)
            for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(Dd, eps=eps)
        self.mlm_layer = MlmLayer(Dd, D, c.vocab_size, c.mlm_ln_eps)
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.decoder_pos_embed_learned, std=0.02)
        nn.init.normal_(self.token_emb.word_embeddings.weight, std=0.02)
        nn.init.normal_(self.token_emb.position_embeddings.weight, std=0.02)
        nn.init.zeros_(self.mlm_layer.bias)

    # ------------------------------------------------------------------ pieces
    def input_ids(self, tokens: torch.Tensor, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B,N] (codes or mask id) -> [B,N+1] with the class slot in front."""
        c = self.config
        if tokens.dim() != 2 or tokens.shape[1] != c.num_tokens:
            raise ValueError(f"expected tokens of shape [B, {c.num_tokens}], got {tuple(tokens.shape)}")
        if class_ids is None:
            slot = tokens.new_full((tokens.shape[0], 1), c.no_class_id)
        else:
            slot = torch.as_tensor(class_ids, device=tokens.device).long().view(-1, 1).expand(tokens.shape[0], 1)
        return torch.cat([slot, tokens], dim=1)

    def forward_encoder(self, ids: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B,L]; keep: optional bool [B,L] with the same count per row (token dropping)."""
        x = self.token_emb(ids)
        if keep is not None:
            x = x[keep].view(x.shape[0], -1, x.shape[-1])
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, is_masked: torch.Tensor,
                        keep: torch.Tensor | None = None, codebook_only: bool = False) -> torch.Tensor:
        """latent: encoder output (of the kept positions); is_masked bool [B,L] (class slot False)."""
        x = self.decoder_embed(latent)
        cls_feat = x[:, :1]
        if keep is not None:
            full = cls_feat.expand(-1, is_masked.shape[1], -1).clone()
            full[keep] = x.reshape(-1, x.shape[-1])
            x = full
        x = torch.where(is_masked.unsqueeze(-1), cls_feat.to(x.dtype), x)
        x = x + self.decoder_pos_embed_learned
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        if codebook_only:  # inference needs only the codebook logits: skip the other vocabulary rows
            K = self.config.codebook_size
            return self.mlm_layer(x, self.token_emb.word_embeddings.weight[:K], K)
        return self.mlm_layer(x, self.token_emb.word_embeddings.weight)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Inference forward on full sequences ids [B,L] -> logits [B,L,vocab] (no dropping)."""
        return self.forward_decoder(self.forward_encoder(ids), ids == self.config.mask_token_id)

    def token_logits(self, tokens: torch.Tensor, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B,N] with mask id at unknown positions -> codebook logits [B,N,codebook_size]."""
        ids = self.input_ids(tokens, class_ids)
        return self.forward_decoder(self.forward_encoder(ids), ids == self.config.mask_token_id,
                                    codebook_only=True)[:, 1:]

    # ------------------------------------------------------------------ training
    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Label-smoothed CE over the codebook logits of positions 1.., averaged over weighted positions."""
        logp = F.log_softmax(logits[:, 1:, : self.config.codebook_size].float(), dim=-1)
        eps = self.config.label_smoothing
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        loss = (1 - eps) * nll + eps * (-logp.mean(-1))
        return (loss * weight).sum() / weight.sum().clamp_min(1e-8)

    def forward(self, tokens: torch.Tensor, class_ids: torch.Tensor | None = None,
                mask_ratio: float | None = None, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None, return_latent: bool = False):
        """Training forward on ground-truth token ids [B,N].

        One masking ratio per batch (truncated Gaussian unless ``mask_ratio`` is given); ``noise`` [B,N]
        decides which positions are masked / dropped (uniform draw if not given).
        Returns (loss, logits, mask [B,N] bool) and the pooled latent if asked.
        """
        c = self.config
        B, N = tokens.shape
        if mask_ratio is None:
            mask_ratio = sample_mask_ratio(c, generator=generator)
        if noise is None:
            noise = torch.rand(B, N, generator=generator, device=tokens.device if generator is None else "cpu").to(tokens.device)
        n_drop = math.ceil(N * c.drop_ratio)
        n_mask = math.ceil(N * mask_ratio)
        drop, mask = random_masks(noise, n_drop, n_mask)
        ids = self.input_ids(tokens.masked_fill(mask, c.mask_token_id), class_ids)
        pad = torch.zeros(B, 1, dtype=torch.bool, device=tokens.device)
        keep = ~torch.cat([pad, drop], 1)
        latent = self.forward_encoder(ids, keep)
        logits = self.forward_decoder(latent, torch.cat([pad, mask], 1), keep)
        loss = self.loss_fn(logits, tokens, mask.float())
        if return_latent:
            return loss, logits, mask, latent
        return loss, logits, mask

    # ------------------------------------------------------------------ features
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean-pooled encoder output over the image positions, nothing masked: [B,D]."""
        return self.forward_encoder(self.input_ids(tokens))[:, 1:].mean(1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
