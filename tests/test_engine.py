"""Invariants of the iterative-decoding engine, run through the pipeline on real small models: the
official tiny checkpoint (16x16 tokens) and a model of the default architecture (the shipped
assets/default when present, else a random one: 32x32 images, 8x8 tokens, 10 classes)."""
import functools

import pytest
import torch

import mage
from mage import image as im
from conftest import ROOT

DEFAULT_DIR = ROOT / "assets" / "default"
SCHEDULE_NAMES = ["cosine", "linear", "square", "sqrt"]


def small_config() -> mage.MAGEConfig:
    """The architecture of the shipped default model."""
    return mage.MAGEConfig(img_size=32, embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=128,
                           decoder_depth=2, decoder_num_heads=4, num_classes=10,
                           vqgan=mage.VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32,
                                                  n_embed=512))


def random_small_pipe(seed: int = 0) -> mage.MAGEPipeline:
    torch.manual_seed(seed)
    cfg = small_config()
    meta = {"class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                            "Sneaker", "Bag", "Ankle boot"], "source": f"random (seed {seed})"}
    return mage.MAGEPipeline(mage.MAGE(cfg), mage.VQGAN(cfg.vqgan), meta=meta, device="cpu")


@functools.lru_cache(maxsize=None)
def small_pipe() -> mage.MAGEPipeline:
    """The shipped default model if it exists, else a random model of the same architecture."""
    if (DEFAULT_DIR / "model.safetensors").is_file():
        return mage.MAGEPipeline.from_pretrained("default", device="cpu")
    return random_small_pipe(0)


@pytest.fixture(scope="module")
def pipe():
    return small_pipe()


def make_image(seed: int = 0, size: int = 32) -> torch.Tensor:
    """A structured test picture in [0,1]: smooth gradients plus a bright blob."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    blob = torch.exp(-((xx - 0.6) ** 2 + (yy - 0.4) ** 2) / 0.05)
    img = torch.stack([xx, yy, blob]) * 0.7 + 0.3 * torch.rand(3, size, size, generator=g)
    return img.clamp(0, 1)[None]




class RecordingNoise:
    """Wraps TorchNoise and keeps every draw so a run can be replayed row by row."""

    def __init__(self, seed, B, N):
        self.inner, self.B, self.N = mage.TorchNoise(seed), B, N
        self.samples, self.gumbels = [], []

    def categorical(self, probs):
        out = self.inner.categorical(probs)
        self.samples.append(out.view(self.B, self.N).clone())
        return out

    def gumbel(self, shape):
        out = self.inner.gumbel(shape)
        self.gumbels.append(out.clone())
        return out


def check_run(steps, tokens0, unknown0, mask_id, schedule, num_steps):
    """Every invariant one decoding run must satisfy."""
    assert len(steps) == num_steps and steps[-1].is_last
    known0 = ~unknown0
    committed_any = torch.zeros_like(unknown0)
    prev_unknown, prev_tokens = unknown0, tokens0.masked_fill(unknown0, mask_id)
    for s in steps:
        # tokens hold the mask id exactly where still unknown; known input tokens never change
        assert torch.equal(s.tokens == mask_id, s.unknown)
        assert torch.equal(s.tokens[known0], tokens0[known0])
        assert torch.equal(s.prediction[known0], tokens0[known0])
        # committed this step = was unknown before and is not now; tokens committed earlier stay
        assert torch.equal(s.committed, prev_unknown & ~s.unknown)
        assert not (s.committed & committed_any).any(), "a position was committed twice"
        assert torch.equal(s.tokens[committed_any], prev_tokens[committed_any])
        assert not (s.unknown & ~prev_unknown).any(), "a decided token became unknown again"
        committed_any |= s.committed
        prev_unknown, prev_tokens = s.unknown, s.tokens
    assert torch.equal(committed_any, unknown0), "committed sets must cover exactly the unknown input"
    final = steps[-1].tokens
    assert not steps[-1].unknown.any() and final.min() >= 0 and final.max() < mask_id
    for b in range(tokens0.shape[0]):
        counts = [int(s.unknown[b].sum()) for s in steps]
        assert counts == mage.schedule_counts(int(unknown0[b].sum()), num_steps, schedule), f"row {b}"
        assert [int(s.mask_len[b]) for s in steps] == counts


# ------------------------------------------------------------------------------------- schedules
def test_official_cosine_counts():
    t12 = [253, 247, 236, 221, 203, 181, 155, 128, 97, 66, 33, 1]
    t20 = [255, 252, 248, 243, 236, 228, 218, 207, 194, 181, 166, 150, 133, 116, 97, 79, 59, 40, 20, 1]
    # the official script reports mask_len, which is 1 after the last step; we report 0 there
    assert mage.schedule_counts(256, 12, "cosine") == t12[:-1] + [0]
    assert mage.schedule_counts(256, 20, "cosine") == t20[:-1] + [0]


def test_official_cosine_counts_in_a_real_run(tiny_pipe):
    steps = list(tiny_pipe.generate_steps(1, steps=12, seed=0))
    assert [int(s.unknown.sum()) for s in steps] == [253, 247, 236, 221, 203, 181, 155, 128, 97, 66, 33, 0]


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_schedule_counts_shape(schedule):
    for n in (0, 1, 2, 7, 64, 256):
        for T in (1, 2, 3, 8, 20, 70):
            c = mage.schedule_counts(n, T, schedule)
            assert len(c) == T and c[-1] == 0
            prev = n
            for x in c[:-1]:
                assert 0 <= x <= prev
                if prev > 1:
                    assert x < prev, (schedule, n, T, c)  # progress every step while possible
                assert x >= min(1, n)  # never finishes early
                prev = x


def test_schedules_differ_in_the_expected_direction():
    c = {s: mage.schedule_counts(256, 10, s) for s in SCHEDULE_NAMES}
    mid = 4  # after half the steps: square keeps most unknown, sqrt fewest
    assert c["square"][mid] > c["cosine"][mid] > c["linear"][mid] > c["sqrt"][mid]


def test_unknown_schedule_rejected():
    with pytest.raises(ValueError, match="unknown schedule 'cubic'"):
        mage.schedule_counts(10, 4, "cubic")


# ------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
@pytest.mark.parametrize("num_steps", [1, 2, 5, 12])
def test_engine_invariants(pipe, schedule, num_steps):
    N, mask_id = pipe.config.num_tokens, pipe.config.mask_token_id
    g = torch.Generator().manual_seed(num_steps)
    tokens = torch.randint(0, pipe.config.codebook_size, (4, N), generator=g)
    unknown = torch.zeros(4, N, dtype=torch.bool)
    unknown[0] = True  # generation
    unknown[1] = torch.rand(N, generator=g) < 0.4  # partially known (inpainting-like)
    unknown[2, 5] = True  # a single unknown token
    # row 3: nothing unknown (must pass through untouched)
    steps = list(pipe.decode_steps(tokens, unknown, steps=num_steps, schedule=schedule, seed=1))
    check_run(steps, tokens, unknown, mask_id, schedule, num_steps)
    assert torch.equal(steps[-1].tokens[3], tokens[3])


def test_invariants_official_tiny_model_with_guidance_free_generation(tiny_pipe):
    N, mask_id = tiny_pipe.config.num_tokens, tiny_pipe.config.mask_token_id
    tokens = torch.full((2, N), mask_id)
    tokens[1, :100] = torch.arange(100)
    unknown = tokens == mask_id
    steps = list(tiny_pipe.decode_steps(tokens, unknown, steps=6, schedule="cosine", seed=2))
    check_run(steps, tokens, unknown, mask_id, "cosine", 6)


def test_determinism_per_seed(pipe):
    a = pipe.generate(2, steps=4, seed=7)
    b = pipe.generate(2, steps=4, seed=7)
    c = pipe.generate(2, steps=4, seed=8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    assert not torch.equal(a.tokens, c.tokens)
    assert not torch.equal(a.tokens[0], a.tokens[1])  # rows get different noise


def test_logits_of_a_row_do_not_depend_on_other_rows(pipe):
    m, N = pipe.model, pipe.config.num_tokens
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, pipe.config.codebook_size, (3, N), generator=g)
    tokens[torch.rand(3, N, generator=g) < 0.5] = pipe.config.mask_token_id
    cls = torch.tensor([pipe.config.class_token_id(c) for c in (1, 4, 9)])
    with torch.no_grad():
        batch = m.token_logits(tokens, cls)
        for i in range(3):
            alone = m.token_logits(tokens[i: i + 1], cls[i: i + 1])
            torch.testing.assert_close(batch[i: i + 1], alone, atol=1e-5, rtol=1e-5)
        # and the rows really are different inputs
        assert (batch[0] - batch[1]).abs().max() > 1e-3


def test_batch_rows_decode_like_single_rows_given_the_same_draws(pipe):
    """TorchNoise draws for the whole batch, so the same seed gives row i different noise alone; with
    the batch's draws sliced per row (RecordedNoise) every row decodes exactly as in the batch."""
    N, mask_id, T = pipe.config.num_tokens, pipe.config.mask_token_id, 5
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, pipe.config.codebook_size, (3, N), generator=g)
    unknown = torch.ones(3, N, dtype=torch.bool)
    unknown[1] = torch.rand(N, generator=g) < 0.6
    labels = [2, 5, 7]
    rec = RecordingNoise(11, 3, N)
    batch = list(pipe.decode_steps(tokens, unknown, steps=T, noise=rec, class_label=labels, guidance_scale=1.5))
    samples, gumbels = torch.stack(rec.samples), torch.stack(rec.gumbels)
    assert samples.shape == (T, 3, N) and gumbels.shape == (T, 3, N)
    for i in range(3):
        noise = mage.RecordedNoise(samples[:, i: i + 1], gumbels[:, i: i + 1])
        alone = list(pipe.decode_steps(tokens[i: i + 1], unknown[i: i + 1], steps=T, noise=noise,
                                       class_label=labels[i], guidance_scale=1.5))
        for t in range(T):
            assert torch.equal(alone[t].tokens[0], batch[t].tokens[i]), f"row {i} step {t}"
            assert torch.equal(alone[t].unknown[0], batch[t].unknown[i])


# ------------------------------------------------------------------------------------- tasks
def test_inpaint_keeps_everything_outside_the_mask(pipe):
    x = make_image(1)
    mask = torch.zeros(32, 32)
    mask[9:19, 5:23] = 1  # not aligned to the 4-pixel tokens
    res = pipe.inpaint(x, mask, threshold=0.5, feather=2, steps=4, seed=0, return_steps=True)
    tok_mask = res.extra["token_mask"]
    assert torch.equal(tok_mask, im.pixel_to_token_mask(mask, 4, 0.5))
    assert 0 < int(tok_mask.sum()) < pipe.config.num_tokens
    gt = pipe.encode(x).cpu()
    for s in res.steps:
        assert torch.equal(s.tokens[~tok_mask], gt[~tok_mask])
    assert torch.equal(res.tokens[~tok_mask], gt[~tok_mask])
    assert (res.tokens != pipe.config.mask_token_id).all()
    torch.testing.assert_close(res.extra["raw"], pipe.decode(res.tokens))
    # composite: original pixels where the feathered weight is 0, the generated ones where it is 1
    w = im.soft_mask(im.token_mask_to_pixels(tok_mask, 8, 4), 2)[:, None].expand_as(x)
    assert (w == 0).any() and (w == 1).any() and ((w > 0) & (w < 1)).any()
    assert torch.equal(res.images[w == 0], x[w == 0])
    assert torch.equal(res.images[w == 1], res.extra["raw"][w == 1])


def test_inpaint_with_empty_mask_returns_the_original(pipe):
    x = make_image(2)
    res = pipe.inpaint(x, torch.zeros(32, 32), steps=3)
    assert torch.equal(res.tokens, pipe.encode(x).cpu())
    assert torch.equal(res.images, x)


def test_outpaint_only_generates_the_new_area(pipe):
    x = make_image(3)
    left, right, top, bottom, g, p = 2, 0, 0, 1, 8, 4
    res = pipe.outpaint(x, left=left, right=right, top=top, bottom=bottom, steps=4, seed=0)
    expected = torch.ones(g, g, dtype=torch.bool)
    expected[top: g - bottom, left: g - right] = False
    assert torch.equal(res.extra["token_mask"][0].view(g, g), expected)
    canvas = res.extra["canvas"]
    gt = pipe.encode(canvas).cpu()
    keep = ~expected.flatten()
    assert torch.equal(res.tokens[0, keep], gt[0, keep])
    inner = (slice(None), slice(None), slice(top * p, (g - bottom) * p), slice(left * p, (g - right) * p))
    assert torch.equal(res.images[inner], canvas[inner])  # no feathering into the kept picture
    small = torch.nn.functional.interpolate(x, size=((g - top - bottom) * p, (g - left - right) * p),
                                            mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(canvas[inner], small)


@pytest.mark.parametrize("iterative", [True, False])
def test_reconstruct_at_ratio_zero_returns_the_tokenizer_tokens(pipe, iterative):
    x = make_image(4)
    res = pipe.reconstruct(x, 0.0, iterative=iterative, steps=3)
    assert torch.equal(res.tokens, pipe.encode(x).cpu())
    assert not res.extra["mask"].any()
    assert res.extra["mse_vs_tokenizer"] == [0.0]


def test_reconstruct_masks_exactly_the_requested_ratio(pipe):
    x = make_image(5)
    res = pipe.reconstruct(x, 0.5, seed=3, steps=3, return_steps=True)
    mask, gt = res.extra["mask"], res.extra["gt_tokens"]
    assert int(mask.sum()) == round(0.5 * pipe.config.num_tokens)
    assert torch.equal(res.tokens[~mask], gt[~mask])
    assert len(res.steps) == 3
    acc = ((res.tokens == gt) & mask).sum().item() / mask.sum().item()
    assert res.extra["token_accuracy"] == [pytest.approx(acc)]


def test_classifier_free_guidance(pipe):
    c = pipe.config
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, c.codebook_size, (2, c.num_tokens), generator=g)
    tokens[:, ::3] = c.mask_token_id
    with torch.no_grad():
        cond = pipe.model.token_logits(tokens, torch.tensor([c.class_token_id(3)] * 2))
        uncond = pipe.model.token_logits(tokens)
    assert (cond - uncond).abs().max() > 1e-4, "the class slot must change the prediction"
    assert torch.equal(pipe.logits_fn(class_label=3, guidance_scale=0.0, n=2)(tokens), cond)
    assert torch.equal(pipe.logits_fn(class_label="Dress", guidance_scale=0.0, n=2)(tokens), cond)
    torch.testing.assert_close(pipe.logits_fn(class_label=3, guidance_scale=2.0, n=2)(tokens),
                               cond + 2.0 * (cond - uncond))
    assert torch.equal(pipe.logits_fn(n=2)(tokens), uncond)
