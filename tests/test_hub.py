"""Our checkpoint format, the model card, the Hugging Face cache, and conversion of official checkpoints."""
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

import mage
from mage import hub
from mage.checkpoint import CheckpointError, read_state_dict, unwrap
from mage.convert import (ConversionError, apply_encoder_state, classifier_forward, compare_models, convert_official,
                          convert_vqgan, load_classifier_checkpoint)
from mage.pipeline import DEFAULT_MODEL_DIR
from conftest import COMPAT, load_vec

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def make_small_model(directory) -> Path:
    """The shipped default model when it exists, else a random model of the same architecture."""
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return DEFAULT_MODEL_DIR
    torch.manual_seed(0)
    cfg = mage.MAGEConfig(img_size=32, embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=128, decoder_depth=2,
                          decoder_num_heads=4, num_classes=10,
                          vqgan=mage.VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32,
                                                 n_embed=512))
    meta = {"class_names": FASHION, "dataset": "random init (tests only)", "license": "MIT"}
    return mage.save_native(directory, mage.MAGE(cfg), mage.VQGAN(cfg.vqgan), meta=meta)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return make_small_model(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def small_pipe(small_dir):
    return mage.MAGEPipeline.from_pretrained(small_dir, device="cpu")


def all_tensors(pipe):
    return {**pipe.model.state_dict(), **{"vqgan." + k: v for k, v in pipe.vqgan.state_dict().items()}}


# ------------------------------------------------------------------------------------ our format
def test_save_load_round_trip_is_bit_exact(small_pipe, tmp_path):
    small_pipe.meta.update(license="MIT", training={"epochs": 3, "batch size": 256}, metrics={"FID (10k)": 42.5})
    small_pipe.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    back = mage.MAGEPipeline.from_pretrained(tmp_path / "m", device="cpu")
    a, b = all_tensors(small_pipe), all_tensors(back)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert back.config == small_pipe.config
    assert {k: v for k, v in back.meta.items() if k != "source"} == \
        {k: v for k, v in small_pipe.meta.items() if k != "source"}
    kw = dict(steps=4, seed=7, class_label=3, guidance_scale=1.0)
    assert torch.equal(small_pipe.generate(2, **kw).tokens, back.generate(2, **kw).tokens)
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n")
    assert str(small_pipe.meta.get("dataset", "not recorded")) in card and "| epochs | 3 |" in card and "| FID (10k) | 42.5 |" in card
    assert "Ankle boot" in card and "class-conditional (10 classes)" in card


@pytest.mark.parametrize("dtype,ratio", [("float16", 0.51), ("bfloat16", 0.51)])
def test_half_precision_variant(small_pipe, small_dir, tmp_path, dtype, ratio):
    small_pipe.save_pretrained(tmp_path / "full")
    small_pipe.save_pretrained(tmp_path / "half", dtype=dtype)
    full = (tmp_path / "full" / "model.safetensors").stat().st_size
    half = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert half / full < ratio
    assert json.loads((tmp_path / "half" / "config.json").read_text())["dtype"] == dtype
    assert f"| weights dtype | {dtype} |" in (tmp_path / "half" / "README.md").read_text()
    back = mage.MAGEPipeline.from_pretrained(tmp_path / "half", device="cpu")
    for k, v in all_tensors(small_pipe).items():
        w = all_tensors(back)[k]
        assert w.dtype == v.dtype, k  # cast back to float32 on loading
        if v.is_floating_point():
            assert torch.equal(w, v.to(getattr(torch, dtype)).float()), k


# ------------------------------------------------------------------------------ Hugging Face cache
def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def populate_hf_cache(hf_home: Path, repo_id: str, files: dict) -> str:
    """Lay files out exactly as huggingface_hub's cache does: blobs/<etag>, snapshots/<commit>/<name> ->
    relative symlink to the blob, refs/main = commit. LFS files (.safetensors) are named by sha256,
    regular files by their git blob sha1. Returns the commit hash."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    blobs = {}
    for name, src in files.items():
        data = Path(src).read_bytes()
        etag = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else git_blob_sha1(data)
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / etag).write_bytes(data)
        blobs[name] = etag
    commit = hashlib.sha1(json.dumps(blobs, sort_keys=True).encode()).hexdigest()
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, etag in blobs.items():
        os.symlink(f"../../blobs/{etag}", snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_from_pretrained_resolves_from_offline_cache(small_pipe, hf_home, tmp_path):
    small_pipe.save_pretrained(tmp_path / "m")
    commit = populate_hf_cache(hf_home, "mage-studio/tiny-test", {f: tmp_path / "m" / f for f in
                                                                   ("config.json", "model.safetensors", "README.md")})
    from huggingface_hub import scan_cache_dir  # the library itself recognises our layout as its cache
    info = scan_cache_dir(hf_home / "hub")
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == "mage-studio/tiny-test" and repo.nb_files == 3
    assert [r.commit_hash for r in repo.revisions] == [commit]

    path = hub.download_model("mage-studio/tiny-test")
    assert Path(path) == hf_home / "hub" / "models--mage-studio--tiny-test" / "snapshots" / commit
    for rev in (None, commit):
        pipe = mage.MAGEPipeline.from_pretrained("mage-studio/tiny-test", revision=rev, device="cpu")
        assert pipe.meta["source"].startswith("Hugging Face Hub mage-studio/tiny-test")
        a, b = all_tensors(small_pipe), all_tensors(pipe)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_hub_errors_are_clear_when_not_cached(small_pipe, hf_home, tmp_path):
    with pytest.raises(CheckpointError, match=r"model 'nobody/missing' is not in the local Hugging Face cache "
                                              r"\(.*hf/hub\) and downloads are disabled \(HF_HUB_OFFLINE=1\)"):
        mage.MAGEPipeline.from_pretrained("nobody/missing", device="cpu")
    small_pipe.save_pretrained(tmp_path / "m")  # a cached snapshot without the weights
    populate_hf_cache(hf_home, "someone/partial", {"config.json": tmp_path / "m" / "config.json"})
    with pytest.raises(CheckpointError, match="'someone/partial' is not in the local .* lacks model.safetensors"):
        mage.MAGEPipeline.from_pretrained("someone/partial", device="cpu")
    with pytest.raises(CheckpointError, match=r"someone/partial@v2.*\(local_files_only=True\)"):
        hub.download_model("someone/partial", revision="v2", local_files_only=True)
    with pytest.raises(CheckpointError, match="neither an existing local path nor a valid Hugging Face repo id"):
        hub.download_model("bad repo name!")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        small_pipe.push_to_hub("me/model")


def test_unreachable_hub_falls_back_to_the_cache(small_pipe, hf_home, tmp_path, monkeypatch):
    """Online mode, but the Hub endpoint refuses connections (a closed local port)."""
    import socket
    from huggingface_hub import constants
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    small_pipe.save_pretrained(tmp_path / "m")
    populate_hf_cache(hf_home, "mage-studio/cached",
                      {f: tmp_path / "m" / f for f in ("config.json", "model.safetensors")})
    pipe = mage.MAGEPipeline.from_pretrained("mage-studio/cached", device="cpu")
    assert torch.equal(pipe.model.mlm_layer.bias, small_pipe.model.mlm_layer.bias)
    with pytest.raises(CheckpointError, match="'nobody/missing' is not in the local .* the Hub could not be reached"):
        hub.download_model("nobody/missing")


def test_push_staging(small_pipe, small_dir, tmp_path):
    """What push_to_hub would upload (the upload itself needs the network)."""
    out = hub.stage_for_upload(small_dir, tmp_path / "a", repo_id="me/m")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (out / "model.safetensors").resolve() == (Path(small_dir) / "model.safetensors").resolve()
    out = hub.stage_for_upload(small_pipe, tmp_path / "b", variant="bf16", repo_id="me/m")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert 'from_pretrained("me/m")' in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="unknown variant"):
        hub.stage_for_upload(small_pipe, tmp_path / "c", variant="int4")


# ----------------------------------------------------------------------------------- conversion
def test_convert_tiny_official_reproduces_compat_vectors(tmp_path):
    rep = convert_official(COMPAT / "tiny_mage_checkpoint.pth", tmp_path / "tiny")
    assert rep["max_abs_logit_diff"] <= 1e-5 and rep["vqgan_id_agreement"] == 1.0
    model, vq, meta = mage.load_native(tmp_path / "tiny")
    assert meta["converted_from"].startswith("tiny_mage_checkpoint.pth")
    f = load_vec("mage_forward_vectors.pt")
    with torch.no_grad():
        logits = model.logits(f["input_ids"])
    torch.testing.assert_close(logits[..., :1024], f["logits_codebook"], atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(-1), f["logits_argmax_full"])
    v = load_vec("vqgan_vectors.pt")
    with torch.no_grad():
        assert torch.equal(vq.encode(v["images"]), v["indices"])
        torch.testing.assert_close(vq.decode(v["decode_tokens"]), v["decode_tokens_out"], atol=1e-4, rtol=1e-4)

    half = convert_official(COMPAT / "tiny_mage_checkpoint.pth", tmp_path / "half", dtype="float16")
    assert half["size_bytes"] / rep["size_bytes"] < 0.51
    assert 0 < half["max_abs_logit_diff"] <= half["tolerance"]


def test_conversion_check_catches_a_wrong_weight(tiny, tmp_path):
    model, vq = tiny
    mage.save_native(tmp_path / "m", model, vq)
    m2, v2, _ = mage.load_native(tmp_path / "m")
    with torch.no_grad():
        m2.blocks[1].mlp.fc2.bias[3] += 1e-3
    with pytest.raises(ConversionError, match=r"differs from the source: max \|logit diff\|"):
        compare_models((model, vq), (m2, v2))
    m2, v2, _ = mage.load_native(tmp_path / "m")
    for p in [*m2.parameters(), *v2.parameters()]:  # what a correct float16 file holds
        p.data = p.data.half().float()
    assert compare_models((model, vq), (m2, v2), dtype=torch.float16)["max_abs_logit_diff"] > 0
    with torch.no_grad():
        v2.quantize.embedding.weight[5] += 1.0
    with pytest.raises(ConversionError, match="stored tensor vqgan.quantize.embedding.weight"):
        compare_models((model, vq), (m2, v2), dtype=torch.float16)


def test_convert_vqgan_alone(tmp_path):
    sd = unwrap(read_state_dict(COMPAT / "tiny_mage_checkpoint.pth"))
    torch.save({"state_dict": {k[6:]: v for k, v in sd.items() if k.startswith("vqgan.")}}, tmp_path / "vq.ckpt")
    rep = convert_vqgan(tmp_path / "vq.ckpt", tmp_path / "out")
    assert rep["vqgan_id_agreement"] == 1.0
    vq = mage.load_vqgan(tmp_path / "out" / "vqgan.safetensors")
    v = load_vec("vqgan_vectors.pt")
    assert torch.equal(vq.encode(v["images"]), v["indices"])


def test_convert_refuses_classifier_and_vqgan_files(tmp_path):
    sd = unwrap(read_state_dict(COMPAT / "tiny_mage_checkpoint.pth"))
    torch.save({k[6:]: v for k, v in sd.items() if k.startswith("vqgan.")}, tmp_path / "vq.ckpt")
    with pytest.raises(CheckpointError, match="VQGAN tokenizer checkpoint, not a MAGE model"):
        convert_official(tmp_path / "vq.ckpt", tmp_path / "o")
    torch.save({"model": classifier_state_dict("finetune", "global_pool")}, tmp_path / "ft.pth")
    with pytest.raises(CheckpointError, match="finetune classifier checkpoint"):
        convert_official(tmp_path / "ft.pth", tmp_path / "o")


# ------------------------------------------------------------------------------ classifier starts
def _features_and_logits(encoder, head, info, pool):
    model = apply_encoder_state(mage.MAGE(info["config"]).eval(), encoder)
    vq = mage.load_vqgan(info["vqgan_state_dict"])
    v = load_vec("vqgan_vectors.pt")
    with torch.no_grad():
        ids = torch.cat([torch.full((2, 1), info["config"].no_class_id), vq.encode(v["images"])], 1)
        return classifier_forward(model, ids, head, pool)


def test_pretrained_checkpoint_as_classifier_start():
    encoder, head, info = load_classifier_checkpoint(COMPAT / "tiny_mage_checkpoint.pth")
    assert info["kind"] == "pretrain" and head == {} and info["pool"] is None
    assert "norm.weight" in encoder and not any(k.startswith("decoder") for k in encoder)
    assert {"pos_embed", "cls_token", "decoder_embed.weight"} <= set(info["ignored"])
    c = load_vec("classifier_vectors.pt")
    fc = {"fc_norm.weight": c["fc_norm_weight"], "fc_norm.bias": c["fc_norm_bias"],
          "head.weight": c["head_weight"], "head.bias": c["head_bias"]}
    f, logits = _features_and_logits(encoder, fc, info, "global_pool")
    torch.testing.assert_close(f, c["global_pool_features"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, c["global_pool_logits"], atol=1e-5, rtol=1e-5)
    f, logits = _features_and_logits(encoder, {k: fc[k] for k in ("head.weight", "head.bias")}, info, "cls_token")
    torch.testing.assert_close(f, c["cls_token_features"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, c["cls_token_logits"], atol=1e-5, rtol=1e-5)


def classifier_state_dict(kind: str, pool: str) -> dict:
    """A tiny classifier checkpoint with exactly the key layout of the official ViT-B one in the manifest
    (blocks 0..1 only; tiny tensors; the tiny VQGAN's keys)."""
    manifest = json.loads((COMPAT / "official_state_dict_manifest.json").read_text())
    names = manifest[f"vit_base_patch16_{kind}_{pool}"]
    sd = unwrap(read_state_dict(COMPAT / "tiny_mage_checkpoint.pth"))
    c = load_vec("classifier_vectors.pt")
    g = torch.Generator().manual_seed(1)
    extra = {"fc_norm.weight": c["fc_norm_weight"], "fc_norm.bias": c["fc_norm_bias"], "head.weight": c["head_weight"],
             "head.bias": c["head_bias"], "head.1.weight": c["head_weight"], "head.1.bias": c["head_bias"],
             "head.0.running_mean": torch.randn(64, generator=g),
             "head.0.running_var": torch.rand(64, generator=g) + 0.5,
             "head.0.num_batches_tracked": torch.tensor(100), "pos_embed": c["pos_embed_interpolated"],
             "patch_embed.proj.weight": torch.zeros(64, 3, 16, 16)}
    out = {}
    for k in names:
        if k.startswith("vqgan.") or (k.startswith("blocks.") and int(k.split(".")[1]) >= 2):
            continue
        out[k] = extra[k] if k in extra else sd[k]
    out.update({k: v for k, v in sd.items() if k.startswith("vqgan.")})
    return out


@pytest.mark.parametrize("kind,pool", [("finetune", "global_pool"), ("finetune", "cls_token"),
                                       ("linprobe", "global_pool"), ("linprobe", "cls_token")])
def test_classifier_checkpoints_load(kind, pool, tmp_path):
    torch.save({"model": classifier_state_dict(kind, pool)}, tmp_path / "c.pth")
    encoder, head, info = load_classifier_checkpoint(tmp_path / "c.pth")
    assert (info["kind"], info["pool"], info["num_classes"]) == (kind, pool, 10)
    assert (info["embed_dim"], info["depth"]) == (64, 2)
    assert ("norm.weight" in encoder) == (pool == "cls_token")
    assert "pos_embed" in info["ignored"]
    f, logits = _features_and_logits(encoder, head, info, pool)
    c = load_vec("classifier_vectors.pt")
    torch.testing.assert_close(f, c[f"{pool}_features"], atol=1e-5, rtol=1e-5)
    if kind == "finetune":
        torch.testing.assert_close(logits, c[f"{pool}_logits"], atol=1e-5, rtol=1e-5)
    else:  # reference: torch's own BatchNorm1d(affine=False, eps=1e-6) + Linear with the loaded tensors
        bn, lin = torch.nn.BatchNorm1d(64, affine=False, eps=1e-6).eval(), torch.nn.Linear(64, 10)
        bn.load_state_dict({k[7:]: v for k, v in head.items() if k.startswith("head.0.")})
        lin.load_state_dict({k[7:]: v for k, v in head.items() if k.startswith("head.1.")})
        with torch.no_grad():
            torch.testing.assert_close(logits, lin(bn(f)), atol=1e-5, rtol=1e-5)
