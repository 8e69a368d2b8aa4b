"""One iterative-decoding engine (MaskGIT / MAGE style) shared by generation, inpainting,
outpainting and reconstruction.

The engine knows nothing about the network: it calls ``logits_fn(tokens) -> [B, N, K]`` where
``tokens`` holds the mask id at unknown positions, and yields a :class:`DecodeStep` per step.

One step (t = 0..T-1, r = (t+1)/T), following the official ``gen_image``:
1. sample every position from softmax(logits / sampling_temperature);
2. keep known tokens, take the sample at unknown ones;
3. confidence = log p(sample) (+inf at known positions) + choice_temperature * (1 - r) * Gumbel;
4. the ``mask_len`` least confident unknown positions stay unknown, with
   mask_len = max(1, min(#unknown - 1, floor(#unknown_at_start * schedule(r)))); after the last step
   nothing stays unknown.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch

SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda r: math.cos(math.pi / 2.0 * r),  # official
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r * r,  # keeps more tokens unknown early on (convex)
    "sqrt": lambda r: 1.0 - math.sqrt(r),  # commits many tokens early (concave)
}


def schedule_counts(n_unknown: int, steps: int, schedule: str = "cosine") -> list[int]:
    """Number of unknown tokens left after each step for a row starting with ``n_unknown``."""
    fn = _schedule_fn(schedule)
    counts, left = [], n_unknown
    for t in range(steps):
        if t == steps - 1 or left == 0:
            left = 0
        else:
            left = max(1, min(left - 1, math.floor(n_unknown * fn((t + 1) / steps))))
        counts.append(left)
    return counts


def _schedule_fn(schedule: str) -> Callable[[float], float]:
    if callable(schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[schedule]


class NoiseSource(Protocol):
    """Where the engine's randomness comes from (swap it to replay recorded draws)."""

    def categorical(self, probs: torch.Tensor) -> torch.Tensor:  # probs [M,K] -> ids [M]
        ...

    def gumbel(self, shape: tuple[int, ...]) -> torch.Tensor:  # float64
        ...


class TorchNoise:
    """Draws from a ``torch.Generator`` (seeded, CPU) so results do not depend on global state.

    The categorical draw is argmax(p / Exp(1)), i.e. what torch.multinomial does for one sample.
    """

    def __init__(self, seed: int | None = None, generator: torch.Generator | None = None):
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(0 if seed is None else int(seed))
        self.generator = generator

    def categorical(self, probs):
        q = torch.empty(probs.shape, dtype=probs.dtype).exponential_(1, generator=self.generator)
        return (probs / q.to(probs.device)).argmax(-1)

    def gumbel(self, shape):
        u = torch.rand(shape, dtype=torch.float64, generator=self.generator)
        return -torch.log(-torch.log(u.clamp_min(1e-300)))


class OfficialNoise:
    """The official script's random stream: torch's and numpy's *global* RNGs seeded with ``seed``.

    With the same seed and batch this reproduces ``gen_img_uncond.py`` on CPU draw for draw.
    It reseeds global state; prefer :class:`TorchNoise` in applications.
    """

    def __init__(self, seed: int):
        import numpy as np
        torch.manual_seed(seed)
        np.random.seed(seed)
        self._np = np

    def categorical(self, probs):
        return torch.multinomial(probs, 1, replacement=True).squeeze(-1)

    def gumbel(self, shape):
        return torch.from_numpy(self._np.random.gumbel(size=shape))


class RecordedNoise:
    """Replays recorded draws: ``samples`` [T,B,N] ids and ``gumbel`` [T,B,N] float64."""

    def __init__(self, samples: torch.Tensor, gumbel: torch.Tensor):
        self.samples, self.gumbels, self._i, self._j = samples, gumbel, 0, 0

    def categorical(self, probs):
        out = self.samples[self._i].reshape(-1)
        self._i += 1
        return out.to(probs.device)

    def gumbel(self, shape):
        out = self.gumbels[self._j].to(torch.float64)
        self._j += 1
        return out.reshape(shape)


@dataclass
class DecodeStep:
    """What happened in one decoding step (all tensors on CPU, batch first, N = h*w positions)."""

    step: int  # 0-based
    num_steps: int
    tokens: torch.Tensor  # [B,N] long, after this step; mask id where still unknown
    unknown: torch.Tensor  # [B,N] bool, after this step
    sampled: torch.Tensor  # [B,N] long, the raw draw at every position
    probs: torch.Tensor  # [B,N] float, model probability of the token now at each position
    committed: torch.Tensor  # [B,N] bool, fixed at this step
    prediction: torch.Tensor  # [B,N] long, the full grid the model predicts now (known kept)
    confidence: torch.Tensor  # [B,N] float, the noisy confidence used for the choice (+inf known)
    mask_len: torch.Tensor = field(default=None)  # [B] unknowns kept after this step

    @property
    def is_last(self) -> bool:
        return self.step == self.num_steps - 1


class MaskGITSampler:
    """Iterative parallel decoding with a masking schedule.

    Args:
        steps: number of decoding steps T.
        schedule: "cosine" (official), "linear", "square", "sqrt", or a callable r -> fraction unknown.
        choice_temperature: scale of the Gumbel noise added to the confidences, linearly annealed to 0
            (the official ``--temp``; 4.5 default, 6.0 for the paper's FID numbers).
        sampling_temperature: softmax temperature of the categorical draw (official: 1.0).
    """

    def __init__(self, steps: int = 12, schedule="cosine", choice_temperature: float = 4.5,
                 sampling_temperature: float = 1.0):
        if int(steps) < 1:
            raise ValueError("steps must be >= 1")
        if sampling_temperature <= 0:
            raise ValueError("sampling_temperature must be > 0")
        if choice_temperature < 0:
            raise ValueError("choice_temperature must be >= 0")
        self.steps, self.schedule = int(steps), schedule
        self.schedule_fn = _schedule_fn(schedule)
        self.choice_temperature = float(choice_temperature)
        self.sampling_temperature = float(sampling_temperature)

    def counts(self, n_unknown: int) -> list[int]:
        return schedule_counts(n_unknown, self.steps, self.schedule_fn)

    @torch.no_grad()
    def __call__(self, logits_fn: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor,
                 unknown: torch.Tensor, mask_token_id: int, noise: NoiseSource | None = None,
                 seed: int | None = None) -> Iterator[DecodeStep]:
        """Decode ``tokens`` [B,N] at positions ``unknown`` [B,N] (bool); yields one record per step."""
        if tokens.shape != unknown.shape or tokens.dim() != 2:
            raise ValueError(f"tokens {tuple(tokens.shape)} and unknown {tuple(unknown.shape)} must both be [B,N]")
        noise = noise if noise is not None else TorchNoise(seed)
        unknown = unknown.bool().clone()
        tokens = tokens.long().masked_fill(unknown, mask_token_id)
        n0 = unknown.sum(1)  # unknown count per row at the start
        B, N = tokens.shape
        T = self.steps
        for t in range(T):
            r = (t + 1) / T
            logits = logits_fn(tokens).float()
            probs = torch.softmax(logits / self.sampling_temperature, dim=-1)
            K = probs.shape[-1]
            draw = noise.categorical(probs.reshape(-1, K)).view(B, N).to(tokens.device)
            sampled = torch.where(unknown, draw, tokens)
            p_sel = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
            sel = torch.where(unknown, p_sel.double(), torch.full_like(p_sel, math.inf, dtype=torch.float64)).float()
            frac = self.schedule_fn(r)
            left = unknown.sum(1)
            mask_len = torch.tensor([max(1, min(int(u) - 1, math.floor(int(n) * frac)))
                                     for u, n in zip(left.tolist(), n0.tolist())], device=tokens.device)
            temp = self.choice_temperature * (1.0 - r)
            g = noise.gumbel((B, N)).to(tokens.device)
            confidence = torch.log(sel) + (temp * g).float()
            if t == T - 1:
                still = torch.zeros_like(unknown)
                mask_len = torch.zeros_like(mask_len)
            else:
                rank = confidence.argsort(dim=1, stable=True).argsort(dim=1)
                still = (rank < mask_len.unsqueeze(1)) & unknown
                mask_len = still.sum(1)
            committed = unknown & ~still
            new_tokens = sampled.masked_fill(still, mask_token_id)
            yield DecodeStep(step=t, num_steps=T, tokens=new_tokens.cpu(), unknown=still.cpu(),
                             sampled=draw.cpu(), probs=p_sel.cpu(), committed=committed.cpu(),
                             prediction=sampled.cpu(), confidence=confidence.cpu(), mask_len=mask_len.cpu())
            tokens, unknown = new_tokens, still
