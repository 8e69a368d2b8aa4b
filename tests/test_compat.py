"""Our implementation against vectors computed with the official code (../shared/compat)."""
import json

import numpy as np
import pytest
import torch

import mage
from mage.checkpoint import sincos_table, split_official, read_state_dict, unwrap
from conftest import COMPAT, load_vec


def close(a, b, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


def test_vqgan_vectors(tiny):
    _, vq = tiny
    v = load_vec("vqgan_vectors.pt")
    with torch.no_grad():
        z = vq.encoder(v["images"])
        close(z, v["encoder_out"])
        assert torch.equal(vq.encode(v["images"]), v["indices"])
        z_q, loss, ids = vq.quantize(z)
        close(z_q, v["z_q"], atol=1e-6)
        assert loss.item() == pytest.approx(v["vq_loss"].item(), rel=1e-6)
        close(vq.decoder(z_q), v["recon"], atol=1e-4)
        close(vq.decode(v["decode_tokens"]), v["decode_tokens_out"], atol=1e-4)


def test_mage_forward_vectors(tiny):
    model, _ = tiny
    f = load_vec("mage_forward_vectors.pt")
    ids = f["input_ids"]
    assert torch.equal(model.input_ids(f["gt_indices"].masked_fill(f["mask"], 2024)), ids)
    with torch.no_grad():
        close(model.token_emb(ids), f["token_emb_out"])
        enc = model.forward_encoder(ids)
        close(enc, f["encoder_out"])
        logits = model.logits(ids)
        close(logits[..., :1024], f["logits_codebook"])
        close(logits[:, :8], f["logits_full_first8"])
        close(logits.logsumexp(-1), f["logits_logsumexp_full"])
        assert torch.equal(logits.argmax(-1), f["logits_argmax_full"])
        loss = model.loss_fn(logits, f["gt_indices"], f["mask"].float())
    assert loss.item() == pytest.approx(f["loss"].item(), rel=1e-6)


def test_training_path_vectors(tiny):
    model, vq = tiny
    t = load_vec("mage_train_path_vectors.pt")
    images = t["images_uint8"].float() / 255
    gt = vq.encode(images)
    assert torch.equal(gt, t["gt_indices"])
    model.eval()  # dropout off, as when the vectors were made
    with torch.no_grad():
        loss, logits, mask, latent = model(gt, mask_ratio=float(t["mask_rate"]), noise=t["noise"], return_latent=True)
    assert int(mask.sum(1)[0]) == 148
    assert torch.equal(mask.float(), t["token_all_mask"][:, 1:])
    close(latent, t["latent"])
    close(logits.logsumexp(-1), t["logits_logsumexp_full"])
    assert torch.equal(logits[..., :1024].argmax(-1), t["logits_argmax_codebook"])
    close(logits[:, 1:6, :1024], t["logits_codebook_pos1_5"])
    assert loss.item() == pytest.approx(t["loss"].item(), rel=1e-6)


def _trace_check(tiny, noise):
    model, vq = tiny
    tr = load_vec("generation_trace.pt")
    T, B = tr["enc_input_ids"].shape[:2]
    sampler = mage.MaskGITSampler(steps=T, choice_temperature=4.5)
    tokens = torch.full((B, 256), 2024)
    fed = []

    def logits_fn(tok):
        fed.append(tok.clone())
        return model.token_logits(tok)

    steps = list(sampler(logits_fn, tokens, torch.ones(B, 256, dtype=torch.bool), 2024, noise=noise))
    assert len(steps) == T
    for t, s in enumerate(steps):
        assert torch.equal(model.input_ids(fed[t]), tr["enc_input_ids"][t]), f"step {t} input"
        assert torch.equal(s.sampled, tr["raw_sampled"][t]), f"step {t} draw"
        sel = torch.where(fed[t] == 2024, s.probs, torch.full_like(s.probs, float("inf")))
        close(sel, tr["selected_probs"][t])
        expected_unknown = tr["masking"][t] if t < T - 1 else torch.zeros_like(tr["masking"][t])
        assert torch.equal(s.unknown, expected_unknown), f"step {t} masking"
        assert int(s.unknown[0].sum()) == (tr["mask_len"][t].item() if t < T - 1 else 0)
    assert torch.equal(steps[-1].tokens, tr["final_tokens"])
    img = vq.decode(steps[-1].tokens)
    close(img[:, :, :16, :16], tr["image_crop_float"], atol=1e-4)
    close(img.mean((2, 3)), tr["image_mean_per_channel"], atol=1e-4)
    u8 = (img.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)[:, :32, :32]
    assert (u8.int() - tr["image_uint8_crop32"].int()).abs().max() <= 1


def test_generation_trace_replayed(tiny):
    tr = load_vec("generation_trace.pt")
    _trace_check(tiny, mage.RecordedNoise(tr["raw_sampled"], tr["gumbel"]))


def test_generation_trace_redrawn_from_seed(tiny):
    """The official random stream (torch + numpy global RNGs seeded with 3) gives the same trace."""
    _trace_check(tiny, mage.OfficialNoise(3))


def test_sincos_tables_match_official(compat_dir):
    sd = unwrap(read_state_dict(compat_dir / "tiny_mage_checkpoint.pth"))
    close(sincos_table(64, 16), sd["pos_embed"], atol=1e-6)
    close(sincos_table(32, 16), sd["decoder_pos_embed"], atol=1e-6)


def test_official_state_dict_round_trip(tiny, compat_dir, tmp_path):
    model, vq = tiny
    sd = unwrap(read_state_dict(compat_dir / "tiny_mage_checkpoint.pth"))
    out = mage.to_official_state_dict(model, vq)
    assert sorted(out) == sorted(sd)  # (key order is checked against the manifest below)
    for k in out:
        assert out[k].shape == sd[k].shape, k
        if k not in mage.checkpoint.OFFICIAL_UNUSED or k in ("pos_embed", "decoder_pos_embed"):
            close(out[k], sd[k], atol=1e-6)
    torch.save({"model": out}, tmp_path / "rt.pth")
    m2, vq2 = mage.load_official(tmp_path / "rt.pth")
    for a, b in zip(m2.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("preset,name", [("vit_base", "mage_vit_base_patch16"), ("vit_large", "mage_vit_large_patch16")])
def test_presets_match_manifest(preset, name, compat_dir):
    manifest = json.loads((compat_dir / "official_state_dict_manifest.json").read_text())
    cfg = mage.PRESETS[preset]()
    with torch.device("meta"):
        model, vq = mage.MAGE(cfg), mage.VQGAN(cfg.vqgan)
    sd = mage.to_official_state_dict(model, vq)
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(k, v) for k, v in manifest[name].items()]
    assert [(k, list(v.shape)) for k, v in vq.state_dict().items()] == [(k, v) for k, v in manifest["vqgan"].items()]
    total = sum(v.numel() for v in sd.values())
    expected = {"vit_base": 200.99e6, "vit_large": 464.41e6}[preset]  # official totals (spec 3.1)
    assert abs(total - expected) < 0.006e6
    assert sum(p.numel() for p in vq.parameters()) == 54_515_587
