"""Smoke test of the benchmark (bench/run.py --quick on toy sizes) and of its analytic FLOP formulas.

No timing assertions: only structure, positivity, and relations that hold by construction.
"""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mage
from bench import common as C
from bench.flops import mage_step_flops, vqgan_decode_flops, vqgan_encode_flops
from bench.run import main, run_isolated


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    res = main(["--quick", "--out", str(d / "r.json"), "--md", str(d / "r.md")])
    return res, d


def _check_stats(s):
    assert s["n"] >= 1
    assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]


def test_quick_run_structure(quick):
    res, d = quick
    on_disk = json.loads((d / "r.json").read_text())
    assert on_disk["meta"]["quick"] is True and on_disk["cases"].keys() == res["cases"].keys()
    md = (d / "r.md").read_text()
    assert "#### Targets" in md and "gen-b1-s12-fp32" in md

    cases = res["cases"]
    errors = {k: v["error"] for k, v in cases.items() if "error" in v}
    assert not errors
    kinds = {c["spec"]["kind"] for c in cases.values()}
    assert kinds == {"matmul", "generate", "vq_decode", "app", "retrieval", "ab_transformer", "ab_vq_decode",
                     "ab_app", "ab_train", "ab_retrieval"}
    for c in cases.values():
        _check_stats(c["time"])
        assert c["peak_rss_mb"] > 0 and c["wall_s"] > 0
    for dt in ("fp32", "bf16"):
        mm = cases[f"matmul-{dt}-t1"]
        assert res["ceiling_gflops"][dt]["1"] == mm["gflops"] == max(s["gflops_best"] for s in mm["shapes"].values())
        assert all(s["gflops_best"] >= s["gflops"] > 0 for s in mm["shapes"].values())


def test_quick_run_numbers_consistent(quick):
    res, _ = quick
    cases = res["cases"]
    cfg = C.arch_config("quick")
    for c in (c for c in cases.values() if c["spec"]["kind"] == "generate"):
        sp = c["spec"]
        _check_stats(c["forward"])
        # every timed step contains exactly one timed forward
        assert c["forward"]["median"] <= c["step"]["median"]
        assert c["flops_per_step"] == sp["batch"] * mage_step_flops(cfg)
        assert c["gflops"] == pytest.approx(c["flops_per_step"] / c["forward"]["median"] / 1e9)
        assert c["measured_steps"] == min(sp["measure"], sp["steps"])
        assert c["extrapolated"] == (c["measured_steps"] < sp["steps"])
        assert c["images_per_s"] == pytest.approx(sp["batch"] / (c["step"]["median"] * sp["steps"]))
        ceil = res["ceiling_gflops"][C.ceiling_dtype(sp["dtype"])][str(sp["threads"])]
        assert c["pct_of_ceiling"] == pytest.approx(100 * c["gflops"] / ceil)
        assert c["pct_of_ceiling_now"] == pytest.approx(100 * c["gflops"] / c["ceiling_now_gflops"])
    for c in (c for c in cases.values() if c["spec"]["kind"] == "app"):
        for k in ("first_step", "full", "lazy", "forward", "decode"):
            _check_stats(c[k])
        assert c["forwards_per_step"] == (2 if c["spec"]["guidance"] else 1)
    # the two training variants differ exactly by the VQGAN encode of the batch (FLOPs counted by torch)
    tr = cases["ab-train"]
    v = tr["variants"]
    assert (v["re-tokenise every step"]["flops_per_step_counted"] - v["token cache"]["flops_per_step_counted"]
            == tr["encode_flops_per_step"])
    assert tr["flop_bound_speedup"] > 1
    # exact fp32 search finds exactly the reference top-10; the bf16 index a fraction of it
    assert cases["retr-1000-fp32"]["recall_vs_exact"] == 1.0
    rec = cases["ab-retrieval"]["recall_vs_exact"]
    assert rec["float32 x1"] == rec["float32 x32"] == 1.0 and 0 <= rec["bfloat16 x32"] <= 1
    for c in (c for c in cases.values() if c["spec"]["kind"].startswith("ab_")):
        base = c["variants"][c["baseline"]]["speedup"]
        assert base["min"] == base["max"] == 1.0  # baseline against itself, round by round
        for name, var in c["variants"].items():
            _check_stats(var["time"])
            assert var["time"]["n"] == c["spec"]["reps"]
    for r in res["ratios"]:
        assert r["speedup"] > 0
        if r["speedup_min"] is None:  # separate cases: plain ratio of medians
            assert r["speedup"] == pytest.approx(r["baseline_s"] / r["variant_s"])
        else:  # interleaved: median of per-round ratios
            assert r["speedup_min"] <= r["speedup"] <= r["speedup_max"]
    names = {r["optimisation"] for r in res["ratios"]}
    assert {"hand-written attention", "token cache", "CFG as two forwards (previous library)"} <= names
    for t in res["targets"]:
        assert t["passed"] in (True, False, None)
        assert (t["measured"] is None) == (t["passed"] is None)
    assert any(t["passed"] is not None for t in res["targets"])
    for r in res["dominance"]:
        assert 0 < r["decode_share_lazy"] <= r["decode_share_every_step"] < 1


@pytest.mark.parametrize("arch", ["quick", "default"])
def test_flop_formulas_match_torch_counter(arch):
    """The analytic counts equal torch's FLOP counter (attention as explicit matmuls so it is counted)."""
    torch.manual_seed(0)
    cfg = C.arch_config(arch)
    model, vq = mage.MAGE(cfg).eval().requires_grad_(False), mage.VQGAN(cfg.vqgan).eval()
    tokens = torch.full((2, cfg.num_tokens), cfg.mask_token_id)
    with torch.no_grad(), C.attention_impl("eager"), FlopCounterMode(display=False) as fc:
        model.token_logits(tokens)
    assert fc.get_total_flops() == mage_step_flops(cfg, 2)
    ids = torch.randint(0, cfg.codebook_size, (2, cfg.num_tokens))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        vq.decode(ids)
    assert fc.get_total_flops() == vqgan_decode_flops(cfg.vqgan, cfg.grid_size, 2)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        vq.encode(torch.rand(2, 3, cfg.img_size, cfg.img_size))
    assert fc.get_total_flops() == vqgan_encode_flops(cfg.vqgan, cfg.img_size, 2)


def test_official_sizes():
    """ViT-B: ~77.8 GFLOP per decoding step per image; official VQGAN decode ~186.5 GFLOP."""
    cfg = mage.vit_base()
    assert mage_step_flops(cfg) / 1e9 == pytest.approx(77.83, abs=0.01)
    assert vqgan_decode_flops(cfg.vqgan, cfg.grid_size) / 1e9 == pytest.approx(186.55, abs=0.01)


def test_eager_attention_matches_sdpa():
    torch.manual_seed(0)
    cfg = C.arch_config("quick")
    model = mage.MAGE(cfg).eval()
    tokens = torch.randint(0, cfg.codebook_size, (2, cfg.num_tokens))
    tokens[:, ::3] = cfg.mask_token_id
    with torch.no_grad():
        ref = model.token_logits(tokens)
        with C.attention_impl("eager"):
            eager = model.token_logits(tokens)
        again = model.token_logits(tokens)
    torch.testing.assert_close(eager, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(again, ref)  # the swap is undone


def test_two_pass_cfg_matches_pipeline(tmp_path):
    """The bench's two-forward CFG baseline computes the same guided logits as the library's one batch."""
    torch.manual_seed(0)
    cfg = C.default_arch()
    pipe = mage.MAGEPipeline(mage.MAGE(cfg), mage.VQGAN(cfg.vqgan), device="cpu")
    tokens = torch.randint(0, cfg.codebook_size, (3, cfg.num_tokens))
    tokens[:, 1::2] = cfg.mask_token_id
    ref = pipe.logits_fn([1, 4, 7], 2.5, 3)(tokens)
    got = C.two_pass_cfg_logits_fn(pipe)([1, 4, 7], 2.5, 3)(tokens)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    uncond = C.two_pass_cfg_logits_fn(pipe)(None, 0.0, 3)(tokens)
    assert torch.equal(uncond, pipe.logits_fn(None, 0.0, 3)(tokens))


def test_isolated_case_and_bad_input():
    r = run_isolated({"id": "mm", "kind": "matmul", "dtype": "fp32", "n": 64, "m_vit": 16, "reps": 2,
                      "warmup": 1, "threads": 1}, timeout=120)
    assert "error" not in r, r.get("error")
    assert r["rss_scope"].startswith("case") and r["gflops"] > 0 and r["shapes"]["square"]["shape"] == [64, 64, 64]
    bad = run_isolated({"id": "x", "kind": "nope"}, timeout=120)
    assert "unknown case kind" in bad["error"]
    with pytest.raises(SystemExit):
        main(["--quick", "--only", "no-such-case", "--out", "/dev/null"])
