"""Training package on tiny configs: tokenizer, token cache, pre-training, DDP, resume, MAGE-C."""
import json

import pytest
import torch

import mage
from conftest import needs_fashion_mnist, run_module

pytestmark = needs_fashion_mnist

TINY_MAGE = ["--embed-dim", "64", "--depth", "2", "--num-heads", "2", "--decoder-embed-dim", "64",
             "--decoder-depth", "1", "--decoder-num-heads", "2", "--num-class-slots", "100", "--threads", "1"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    from train.tokenizer import main
    main(["--steps", "40", "--batch-size", "16", "--train-limit", "256", "--eval-limit", "64", "--eval-every", "40",
          "--save-every", "40", "--log-every", "10", "--out", str(out), "--threads", "1"])
    return out


def test_tokenizer_training_improves_reconstruction(tokenizer_dir):
    from train.common import read_jsonl
    rows = read_jsonl(tokenizer_dir / "log.jsonl")
    losses = [r["rec"] for r in rows if "rec" in r]
    assert losses[-1] < 0.7 * losses[0]
    stats = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["stats"]
    assert stats["psnr"] > 12 and 0 < stats["codebook_usage"] <= 1
    assert (tokenizer_dir / "loss.png").stat().st_size > 1000


def test_token_cache_round_trip(tokenizer_dir, tmp_path):
    from train.cache import build_cache, load_cache, save_cache
    from train.data import build_dataset
    from train.tokenizer import load_tokenizer
    vq = load_tokenizer(tokenizer_dir)
    ds = build_dataset("fashion-mnist", "train", 32, limit=20)
    cache = build_cache(vq, ds, views=2, batch_size=8, progress=False)
    save_cache(tmp_path / "c.safetensors", cache, {"classes": ds.classes})
    back, meta = load_cache(tmp_path / "c.safetensors")
    assert torch.equal(back["tokens"], cache["tokens"]) and meta["classes"] == ds.classes
    x = torch.stack([ds[i][0] for i in range(20)])
    assert torch.equal(back["tokens"][:, 0].long(), vq.encode(x))  # view 0 = the plain image
    assert not torch.equal(back["tokens"][:, 1], back["tokens"][:, 0])  # view 1 is augmented


def test_pretrain_loss_decreases_and_model_generates(tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    run_module("train.pretrain", "--tokenizer", tokenizer_dir, "--class-cond", "--steps", "60", "--batch-size", "16",
               "--train-limit", "64", "--lr", "3e-3", "--warmup-steps", "5", "--log-every", "5", "--save-every", "30",
               "--no-augment", "--dropout", "0", "--out", out, *TINY_MAGE)
    from train.common import read_jsonl
    losses = [r["loss"] for r in read_jsonl(out / "log.jsonl")]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.1
    assert last < torch.log(torch.tensor(512.0)).item() - 0.15  # below the uniform-guess loss
    pipe = mage.MAGEPipeline.from_pretrained(out / "model", device="cpu")
    assert pipe.config.num_classes == 10 and len(pipe.class_names) == 10
    res = pipe.generate(n=2, steps=4, seed=1, class_label=3, guidance_scale=1.0)
    assert res.images.shape == (2, 3, 32, 32) and 0 <= res.images.min() and res.images.max() <= 1
    assert (out / "loss.png").is_file() and (out / "run_config.json").is_file()
    assert len(list(out.glob("checkpoint-*.pt"))) == 2


def _params(model_dir):
    m, _, _ = mage.load_native(model_dir)
    return {k: v for k, v in m.state_dict().items()}


def test_kill_and_resume_is_exact(tokenizer_dir, tmp_path):
    common = ["--tokenizer", tokenizer_dir, "--steps", "6", "--batch-size", "8", "--train-limit", "64",
              "--log-every", "1", "--save-every", "100", "--class-cond", *TINY_MAGE]  # dropout + augmentation on
    run_module("train.pretrain", *common, "--out", tmp_path / "full")
    run_module("train.pretrain", *common, "--out", tmp_path / "cut", "--stop-after", "3")
    assert not (tmp_path / "cut" / "model").exists()
    r = run_module("train.pretrain", *common, "--out", tmp_path / "cut", "--resume")
    assert "resumed" in r.stdout + r.stderr
    a, b = _params(tmp_path / "full" / "model"), _params(tmp_path / "cut" / "model")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ddp_two_processes_match_single_process(tokenizer_dir, tmp_path):
    common = ["--tokenizer", tokenizer_dir, "--steps", "4", "--train-limit", "64", "--log-every", "1",
              "--save-every", "100", "--dropout", "0", "--lr", "1e-3", *TINY_MAGE]  # dropout off: see module doc
    run_module("train.pretrain", *common, "--batch-size", "16", "--out", tmp_path / "single")
    run_module("train.pretrain", *common, "--batch-size", "8", "--out", tmp_path / "ddp", torchrun=2)
    ranks = json.loads((tmp_path / "ddp" / "ranks.json").read_text())
    assert ranks["world"] == 2 and ranks["max_param_diff_across_ranks"] == 0.0
    a, b = _params(tmp_path / "single" / "model"), _params(tmp_path / "ddp" / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)


def test_mage_c_runs_and_logs_contrastive(tokenizer_dir, tmp_path):
    from train.cache import build_cache, save_cache
    from train.data import build_dataset
    from train.tokenizer import load_tokenizer
    ds = build_dataset("fashion-mnist", "train", 32, limit=64)
    save_cache(tmp_path / "c.safetensors", build_cache(load_tokenizer(tokenizer_dir), ds, 2, progress=False),
               {"classes": ds.classes})
    out = tmp_path / "magec"
    run_module("train.pretrain", "--tokenizer", tokenizer_dir, "--token-cache", tmp_path / "c.safetensors",
               "--steps", "3", "--batch-size", "8", "--contrastive-weight", "0.1", "--ema", "0.99", "--log-every", "1",
               "--out", out, *TINY_MAGE)
    from train.common import read_jsonl
    rows = read_jsonl(out / "log.jsonl")
    assert all("contrastive" in r and r["contrastive"] > 0 for r in rows)
    assert (out / "model" / "model.safetensors").is_file()


def test_info_nce_matches_direct_computation():
    from train.pretrain import info_nce
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    t = 0.3
    a = z1 / z1.norm(dim=1, keepdim=True)
    b = z2 / z2.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(5):
        s_row = [float(a[i] @ b[j]) / t for j in range(5)]
        s_col = [float(a[j] @ b[i]) / t for j in range(5)]
        lse = lambda v: max(v) + torch.log(torch.tensor([sum(torch.exp(torch.tensor(x - max(v))) for x in v)])).item()
        total += 0.5 * ((lse(s_row) - s_row[i]) + (lse(s_col) - s_col[i]))
    assert info_nce(z1, z2, t).item() == pytest.approx(total / 5, rel=1e-5)
    # identical, well-separated pairs give a loss near zero
    e = torch.eye(5) * 10
    assert info_nce(e, e, 0.1).item() < 1e-3


def test_tokenizer_perceptual_and_discriminator_losses(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from train.common import read_jsonl
    from train.tokenizer import PerceptualLoss, main
    pl = PerceptualLoss(size=64)
    x = torch.rand(2, 3, 32, 32)
    assert pl(x, x).item() < 1e-8 < pl(x.flip(-1), x).item()
    rec = x.clone().requires_grad_(True)
    pl(rec * 0.5, x).backward()
    assert rec.grad.abs().sum() > 0  # gradients reach the reconstruction, not the frozen net
    assert not any(p.requires_grad for p in pl.net.parameters())
    main(["--steps", "2", "--batch-size", "4", "--train-limit", "16", "--eval-limit", "8", "--log-every", "1",
          "--perceptual-weight", "0.1", "--disc-weight", "0.1", "--disc-start", "1", "--out", str(tmp_path), "--threads", "1"])
    rows = [r for r in read_jsonl(tmp_path / "log.jsonl") if "rec" in r]
    assert len(rows) == 2 and all(r["perceptual"] > 0 for r in rows)
