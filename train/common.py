"""Shared training plumbing: distributed setup (torchrun), seeding, LR schedule, optimiser groups,
atomic resumable checkpoints, JSONL logging and the loss-curve plot."""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


# --------------------------------------------------------------------------------- distributed
class Dist:
    """Rank/world info from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); single process otherwise."""

    def __init__(self, device: str | None = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device in (None, "auto"):
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                             f"CUDA build {torch.version.cuda}); use --device cpu or auto")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @classmethod
    def from_args(cls, args) -> "Dist":
        """Apply ``--threads`` and set up ``--device`` / torchrun (see :func:`add_device_flags`)."""
        if args.threads:
            torch.set_num_threads(args.threads)
        return cls(args.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def all_reduce_mean(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t) / self.world

    def gather_rows(self, t: torch.Tensor, n_total: int) -> torch.Tensor:
        """Concatenate every rank's rows (rank order; rank r holds :func:`shard_range` r) on every rank."""
        if self.world == 1:
            return t
        chunk = -(-n_total // self.world)
        dtype = t.dtype
        wire = t.int() if dtype in (torch.int16, torch.uint16, torch.int8, torch.bool) else t  # NCCL has no int16
        pad = wire.new_zeros((chunk, *t.shape[1:]))
        pad[: len(t)] = wire
        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        parts = [torch.empty_like(pad, device=dev) for _ in range(self.world)]
        dist.all_gather(parts, pad.to(dev))
        return torch.cat(parts).cpu()[:n_total].to(dtype)

    def rng_states(self) -> list[dict]:
        """Every rank's RNG state (rank order), for a checkpoint that resumes each rank exactly."""
        if self.world == 1:
            return [rng_state()]
        states = [None] * self.world
        dist.all_gather_object(states, rng_state())
        return states

    def restore_rng(self, states: list[dict]):
        """This rank's entry of :meth:`rng_states` (rank 0's if the checkpoint came from fewer ranks)."""
        set_rng_state(states[min(self.rank, len(states) - 1)])

    def max_param_diff(self, model: torch.nn.Module) -> float:
        """Largest difference of any parameter between rank 0 and another rank (0.0 = in sync)."""
        if self.world == 1:
            return 0.0
        flat = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
        alls = [None] * self.world
        dist.all_gather_object(alls, flat)
        return max(float((a - alls[0]).abs().max()) for a in alls)

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def add_device_flags(parser):
    parser.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


class StepBatches(torch.utils.data.Sampler):
    """Yields this rank's index list for each step from ``start``: epoch permutations seeded by
    (seed, epoch), global batch G = B * world, rank r takes slice [r*B, (r+1)*B)."""

    def __init__(self, n, batch, world, rank, seed, start, total):
        self.n, self.b, self.world, self.rank, self.seed = n, batch, world, rank, seed
        self.start, self.total = start, total
        self.per_epoch = n // (batch * world)
        if self.per_epoch == 0:
            raise ValueError(f"dataset of {n} images is smaller than the global batch {batch * world}")

    def __iter__(self):
        G = self.b * self.world
        for step in range(self.start, self.total):
            epoch, k = divmod(step, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            glob = perm[k * G: (k + 1) * G]
            yield glob[self.rank * self.b: (self.rank + 1) * self.b].tolist()

    def __len__(self):
        return self.total - self.start


def step_loader(batches: StepBatches, dataset=None, workers: int = 0):
    """Per step: (images, labels) from ``dataset``, or (index tensor, None) into a token cache when None."""
    if dataset is None:
        return ((torch.tensor(ix), None) for ix in batches)
    # own generator: creating the iterator must not consume the global RNG (exact resume)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, generator=torch.Generator())


def resolve_amp(amp: str, device: torch.device) -> tuple[str, torch.amp.GradScaler]:
    """``--amp auto`` = bf16 on GPU, none on CPU; the grad scaler is active for fp16 on GPU only."""
    amp = amp if amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    return amp, torch.amp.GradScaler("cuda", enabled=amp == "fp16" and device.type == "cuda")


def autocast(amp: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16, enabled=amp != "none")


def shard_range(n: int, world: int, rank: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` items (equal chunks, the last one shorter)."""
    chunk = -(-n // world)
    return range(min(rank * chunk, n), min((rank + 1) * chunk, n))


@torch.no_grad()
def map_dataset(dataset, fn, d: Dist | None = None, batch_size: int = 256, workers: int = 0,
                desc: str = "", progress: bool = True) -> dict[str, torch.Tensor]:
    """Run ``fn(images, labels, indices) -> {name: tensor [B, ...]}`` over a dataset, sharded across the
    ranks of ``d`` (each rank reads only its :func:`shard_range`), and return the full, ordered results on
    every rank. The images stream through a DataLoader; only the outputs are kept. ``indices`` (dataset
    positions) let ``fn`` seed per-item randomness that does not depend on batching or sharding."""
    world, rank = (d.world, d.rank) if d is not None else (1, 0)
    n = len(dataset)
    shard = shard_range(n, world, rank)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(shard)), batch_size=batch_size,
                                         num_workers=workers)
    outs: dict[str, list] = {}
    from tqdm import tqdm
    start = shard.start
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress or rank != 0):
        idx = torch.arange(start, start + len(x))
        start += len(x)
        for k, v in fn(x, torch.as_tensor(y), idx).items():
            outs.setdefault(k, []).append(v.detach().cpu())
    if not outs:  # an empty shard: learn the output shapes from one item
        x, y = dataset[0]
        outs = {k: [v.detach().cpu()[:0]] for k, v in fn(x[None], torch.as_tensor([y]), torch.zeros(1, dtype=torch.long)).items()}
    res = {k: torch.cat(v) for k, v in outs.items()}
    return {k: d.gather_rows(v, n) for k, v in res.items()} if d is not None else res


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------- schedules
def lr_at(it: float, base_lr: float, warmup: float, total: float, min_lr: float = 0.0) -> float:
    """Linear warm-up then half-cycle cosine, per iteration (fractional epochs work too)."""
    if it < warmup:
        return base_lr * it / max(warmup, 1e-8)
    p = (it - warmup) / max(total - warmup, 1e-8)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0)))


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay_names=()) -> list[dict]:
    """AdamW groups: no decay for 1-D parameters (norms, biases) and names in ``no_decay_names``."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or n.endswith(".bias") or n in no_decay_names else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


# --------------------------------------------------------------------------------- checkpoints
def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(out_dir: Path, step: int, state: dict, keep: int = 3) -> Path:
    """Write ``checkpoint-<step>.pt`` atomically (temp file + rename) and keep the last ``keep``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"checkpoint-{step:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(out_dir.glob("checkpoint-*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(out_dir: Path) -> Path | None:
    cks = sorted(Path(out_dir).glob("checkpoint-*.pt"))
    return cks[-1] if cks else None


def load_checkpoint(path: Path) -> dict:
    # our own training checkpoints: plain containers, tensors and numpy RNG state
    return torch.load(path, map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------------- logging
class JsonlLogger:
    def __init__(self, path: Path, enabled: bool = True, tensorboard: bool = False):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.path.parent / "tb"))
            except Exception as e:  # tensorboard is optional
                print(f"[log] tensorboard disabled: {e}")

    def log(self, **row):
        if not self.enabled:
            return
        row.setdefault("time", time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None and "step" in row:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(k, v, row["step"])


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(log_path: Path, out_png: Path, keys=("loss",), title: str = "training"):
    """Loss curve(s) from the JSONL log, with a moving average."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in read_jsonl(log_path) if "step" in r]
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        if not pts:
            continue
        x, y = map(np.asarray, zip(*pts))
        ax.plot(x, y, alpha=0.35, lw=0.8, label=k)
        w = max(1, len(y) // 50)
        if w > 1:
            ax.plot(x[w - 1:], np.convolve(y, np.ones(w) / w, mode="valid"), lw=1.6, label=f"{k} (avg {w})")
        ax.set_xlabel("step")
        ax.set_title(k)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def save_run_config(out_dir: Path, args) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run_config.json").write_text(json.dumps(vars(args), indent=2, default=str))


def load_config_file(parser, argv=None):
    """``--config file.json`` supplies defaults; explicit CLI flags win."""
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        cfg = json.loads(Path(pre.config).read_text())
        known = {a.dest for a in parser._actions}
        bad = set(cfg) - known
        if bad:
            parser.error(f"unknown keys in {pre.config}: {sorted(bad)}")
        parser.set_defaults(**cfg)
    return parser.parse_args(argv)


def run_cli(main) -> None:
    """``python -m train.<x>`` entry: bad paths / inputs end with a one-line message, not a traceback."""
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
