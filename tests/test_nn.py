"""Shared layers: RoPE against a direct complex-rotation formula, attention against naive softmax,
DPT shapes (odd grids, patch 14) and its final resize, activations, the image-index table, the global
fusion (hooks, names, view ids) and heads run in view chunks."""

import cmath
import math

import pytest
import torch
import torch.nn.functional as F

from d3r.nn import (
    Attention,
    Block,
    DPTHead,
    GlobalFusion,
    RoPE2D,
    confidence_activation,
    draw_image_ids,
    image_index_embedding,
    patch_positions,
    pointmap_activation,
    postprocess,
    run_in_view_chunks,
)


def rope_by_formula(t: torch.Tensor, positions: torch.Tensor, freq: float) -> torch.Tensor:
    """Loop over tokens and frequencies: channel pair (i, i + d/2) of each half is a complex number
    rotated by ``coordinate * freq^(-2i/d)`` (y-half uses y, x-half uses x)."""
    _, _, length, dim = t.shape
    half = dim // 2
    out = torch.empty_like(t, dtype=torch.float64)
    for token in range(length):
        for axis in range(2):
            coord = float(positions[token, axis])
            base = axis * half
            for i in range(half // 2):
                theta = coord * freq ** (-2.0 * i / half)
                real, imag = t[..., token, base + i].double(), t[..., token, base + i + half // 2].double()
                rotation = cmath.exp(1j * theta)
                out[..., token, base + i] = real * rotation.real - imag * rotation.imag
                out[..., token, base + i + half // 2] = real * rotation.imag + imag * rotation.real
    return out


def test_patch_positions_row_major_from_zero():
    pos = patch_positions(2, 3)
    assert pos.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_rope_matches_direct_formula():
    torch.manual_seed(0)
    t = torch.randn(2, 3, 6, 16)
    pos = patch_positions(2, 3)
    got = RoPE2D(freq=100.0)(t, pos)
    assert torch.allclose(got.double(), rope_by_formula(t, pos, 100.0), atol=1e-5)


def test_rope_batched_positions_and_relative_property():
    torch.manual_seed(1)
    rope = RoPE2D(100.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    a = torch.tensor([[[3, 5]]])
    b = torch.tensor([[[7, 2]]])
    shift = torch.tensor([[[4, 9]]])
    dot = (rope(q, a) * rope(k, b)).sum()
    dot_shifted = (rope(q, a + shift) * rope(k, b + shift)).sum()
    assert torch.allclose(dot, dot_shifted, atol=1e-5)
    assert not torch.allclose(rope(q, a), q)


def test_rope_rejects_bad_head_dim():
    with pytest.raises(ValueError, match="divisible by 4"):
        RoPE2D()(torch.randn(1, 1, 2, 6), patch_positions(1, 2))


def naive_attention(module: Attention, x: torch.Tensor, positions, scale: float) -> torch.Tensor:
    b, length, dim = x.shape
    heads, hd = module.num_heads, module.head_dim
    qkv = x @ module.qkv.weight.T + module.qkv.bias
    qkv = qkv.reshape(b, length, 3, heads, hd)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    if positions is not None:
        q = rope_by_formula(q, positions, module.rope.freq).float()
        k = rope_by_formula(k, positions, module.rope.freq).float()
    weights = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, length, dim)
    return out @ module.proj.weight.T + module.proj.bias


@pytest.mark.parametrize("use_rope", [False, True])
def test_attention_equals_naive_softmax(use_rope):
    torch.manual_seed(2)
    attn = Attention(16, 2, rope=RoPE2D(100.0) if use_rope else None, scale=0.3)
    x = torch.randn(2, 6, 16)
    pos = patch_positions(2, 3) if use_rope else None
    assert torch.allclose(attn(x, pos), naive_attention(attn, x, pos, 0.3), atol=1e-5)


def test_attention_eval_scale_only_outside_training():
    torch.manual_seed(3)
    attn = Attention(16, 2, eval_scale=0.9)
    x = torch.randn(1, 5, 16)
    assert attn.active_scale == pytest.approx(8**-0.5)
    assert torch.allclose(attn(x), naive_attention(attn, x, None, 8**-0.5), atol=1e-5)
    attn.eval()
    assert torch.allclose(attn(x), naive_attention(attn, x, None, 0.9), atol=1e-5)


def test_attention_with_rope_needs_positions():
    with pytest.raises(ValueError, match="positions"):
        Attention(16, 2, rope=RoPE2D())(torch.randn(1, 4, 16))


def test_block_keys_and_layer_scale():
    plain = set(Block(16, 2).state_dict())
    modules = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    assert plain == {f"{m}.{p}" for m in modules for p in ("weight", "bias")}
    scaled = Block(16, 2, layer_scale_init=1e-5)
    assert set(scaled.state_dict()) - plain == {"ls1.gamma", "ls2.gamma"}
    assert torch.all(scaled.ls1.gamma == 1e-5)
    assert Block(16, 2, norm_eps=1e-5).norm1.eps == 1e-5


def test_block_matches_manual_prenorm():
    torch.manual_seed(4)
    block = Block(16, 2, rope=RoPE2D(), layer_scale_init=0.5)
    x = torch.randn(1, 6, 16)
    pos = patch_positions(2, 3)
    y = x + 0.5 * block.attn(block.norm1(x), pos)
    expected = y + 0.5 * block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(y))))
    assert torch.allclose(block(x, pos), expected, atol=1e-6)


def tiny_dpt(patch_size: int = 16, dims=(8, 12, 12, 12)) -> DPTHead:
    return DPTHead(dim_tokens=list(dims), hooks=[0, 1, 2, 3], layer_dims=[4, 6, 8, 10], feature_dim=8,
                   last_dim=6, num_channels=4, patch_size=patch_size)


def dpt_tokens(head: DPTHead, dims, b: int, h: int, w: int) -> list[torch.Tensor]:
    return [torch.randn(b, h * w, c) for c in dims]


@pytest.mark.parametrize(("patch", "height", "width"), [(16, 336, 512), (16, 48, 80), (14, 70, 98), (14, 98, 42)])
def test_dpt_full_resolution_for_odd_grids_and_patch14(patch, height, width):
    torch.manual_seed(5)
    dims = (8, 12, 12, 12)
    head = tiny_dpt(patch, dims)
    out = head(dpt_tokens(head, dims, 2, height // patch, width // patch), (height, width))
    assert out.shape == (2, 4, height, width)
    assert torch.isfinite(out).all()


def test_dpt_final_resize_equals_official_x2_for_patch16():
    torch.manual_seed(6)
    dims = (8, 12, 12, 12)
    head = tiny_dpt(16, dims).eval()
    tokens = dpt_tokens(head, dims, 1, 3, 5)
    captured = {}
    head.head[0].register_forward_hook(lambda module, inputs, output: captured.update(x=output))
    out = head(tokens, (48, 80))
    official = F.interpolate(captured["x"], scale_factor=2, mode="bilinear", align_corners=True)
    for layer in head.head[2:]:
        official = layer(official)
    assert torch.equal(out, official)


def test_dpt_keys_have_no_layer_rn_alias():
    keys = set(tiny_dpt().state_dict())
    assert "scratch.layer1_rn.weight" in keys and "scratch.layer1_rn.bias" not in keys
    assert not any(k.startswith("scratch.layer_rn") for k in keys)
    head_keys = {k for k in keys if k.startswith("head.")}
    assert head_keys == {f"head.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert len(tiny_dpt().scratch.layer_rn) == 4


def test_dpt_rejects_wrong_token_count():
    dims = (8, 12, 12, 12)
    head = tiny_dpt(16, dims)
    with pytest.raises(ValueError, match="tokens"):
        head(dpt_tokens(head, dims, 1, 3, 4), (48, 80))


def test_pointmap_activation_maps_distance_through_expm1():
    xyz = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0]])
    pts = pointmap_activation(xyz)
    assert torch.allclose(pts[0], torch.tensor([0.6, 0.0, 0.8]) * math.expm1(5.0))
    assert torch.equal(pts[1], torch.zeros(3))


def test_confidence_and_postprocess_layout():
    raw = torch.randn(2, 4, 3, 5)
    pts, conf = postprocess(raw)
    assert pts.shape == (2, 3, 5, 3) and conf.shape == (2, 3, 5)
    assert torch.allclose(conf, 1 + raw[:, 3].exp())
    assert torch.allclose(pts[1, 2, 4], pointmap_activation(raw[1, :3, 2, 4]))
    assert (confidence_activation(torch.tensor([-50.0, 0.0])) >= 1).all()
    with pytest.raises(ValueError, match="B, 4, H, W"):
        postprocess(torch.randn(2, 3, 4, 4))


def test_image_index_embedding_rows():
    table = image_index_embedding(1000, 8)
    assert table.shape == (1000, 8) and table.dtype == torch.float32
    p = 7
    omega = [10000 ** (-d / 4) for d in range(4)]
    expected = [math.sin(p * w) for w in omega] + [math.cos(p * w) for w in omega]
    assert torch.allclose(table[p], torch.tensor(expected), atol=1e-6)
    assert torch.equal(table[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def tiny_fusion(**options) -> GlobalFusion:
    torch.manual_seed(7)
    return GlobalFusion(8, 16, 3, 2, hooks=(0, 1, 3), max_views=10, **options)


def test_global_fusion_hooks_equal_a_manual_pass():
    fusion = tiny_fusion().eval()
    tokens = torch.randn(2, 3 * 4, 8)  # B=2, N=3 views of P=4 tokens, view-major
    ids = torch.tensor([[0, 4, 9], [0, 1, 2]])
    hooked = fusion(tokens, ids)
    x = fusion.decoder_embed(tokens).reshape(2, 3, 4, 16) + image_index_embedding(10, 16)[ids][:, :, None]
    x = x.reshape(2, 12, 16)
    expected = [tokens]
    for index, block in enumerate(fusion.blocks, start=1):
        x = block(x)
        if index == 1:
            expected.append(x)
    expected.append(fusion.norm(x))
    assert len(hooked) == 3 and torch.equal(hooked[0], tokens)
    for got, want in zip(hooked[1:], expected[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # Global attention: another view's tokens change view 0's output; the ids matter.
    changed = tokens.clone()
    changed[:, 8:] += 1.0
    assert not torch.allclose(fusion(changed, ids)[2][:, :4], hooked[2][:, :4], atol=1e-4)
    assert not torch.allclose(fusion(tokens, torch.tensor([[0, 1, 2]] * 2))[2][0], hooked[2][0], atol=1e-4)


def test_global_fusion_names_buffer_and_options():
    default = set(tiny_fusion().state_dict())
    assert {k.split(".")[0] for k in default} == {"decoder_embed", "blocks", "norm"}
    named = tiny_fusion(blocks_name="dec_blocks", norm_name="dec_norm", attn_eval_scale=0.5, mlp_ratio=2.0,
                        qkv_bias=False)
    keys = set(named.state_dict())
    assert keys == {k.replace("blocks.", "dec_blocks.").replace("norm.", "dec_norm.") for k in default
                    if not k.endswith("qkv.bias")}
    assert "image_idx_emb" not in keys and named.max_views == 10
    attn = named.dec_blocks[0].attn
    assert attn.train().active_scale == pytest.approx(8**-0.5) and attn.eval().active_scale == 0.5
    assert named.dec_blocks[0].mlp.fc1.out_features == 32 and named.dec_blocks[0].norm1.eps == 1e-5
    assert named.dec_norm.eps == 1e-6
    with pytest.raises(ValueError, match="hooks"):
        GlobalFusion(8, 16, 3, 2, hooks=(0, 4), max_views=10)


def test_global_fusion_activation_checkpointing_keeps_gradients():
    tokens, ids = torch.randn(1, 6, 8), torch.tensor([[0, 3]])
    grads = []
    for fusion in (tiny_fusion(), tiny_fusion(activation_checkpointing=True)):
        fusion.train()
        fusion(tokens, ids)[2].square().mean().backward()
        grads.append(fusion.decoder_embed.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_sequential_image_ids():
    ids = draw_image_ids(3, 4, max_views=10)
    assert ids.dtype == torch.long and torch.equal(ids, torch.arange(4).expand(3, 4))
    with pytest.raises(ValueError, match="max_views=10"):
        draw_image_ids(1, 11, max_views=10)
    with pytest.raises(ValueError, match="max_views"):
        draw_image_ids(1, 0, max_views=10)


def test_random_image_ids_distinct_view0_zero_and_official_draws():
    ids = draw_image_ids(64, 6, max_views=1000, random=True)
    assert ids.shape == (64, 6) and ids.dtype == torch.long
    assert (ids[:, 0] == 0).all() and (ids[:, 1:] >= 1).all() and (ids < 1000).all()
    assert all(len(set(row.tolist())) == 6 for row in ids)
    assert len({tuple(row.tolist()) for row in ids}) > 1  # drawn per sample
    # As many views as rows: a permutation of 0..max_views-1 with 0 first.
    full = draw_image_ids(5, 7, max_views=7, random=True)
    assert (full[:, 0] == 0).all() and all(sorted(row.tolist()) == list(range(7)) for row in full)


def test_random_image_ids_reproduce_the_official_randperm_per_sample():
    drawn = draw_image_ids(3, 5, max_views=1000, random=True, generator=torch.Generator().manual_seed(11))
    official_generator = torch.Generator().manual_seed(11)
    official = torch.stack([
        torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(999, generator=official_generator)[:4] + 1])
        for _ in range(3)
    ])
    assert torch.equal(drawn, official)
    again = draw_image_ids(3, 5, max_views=1000, random=True, generator=torch.Generator().manual_seed(11))
    assert torch.equal(drawn, again)
    other = draw_image_ids(3, 5, max_views=1000, random=True, generator=torch.Generator().manual_seed(12))
    assert not torch.equal(drawn, other)


@pytest.mark.parametrize("chunk", [1, 2, 4, 5, None])
def test_heads_in_view_chunks_equal_all_views_at_once(chunk):
    torch.manual_seed(8)
    dims = (8, 12, 12, 12)
    head = tiny_dpt(16, dims).eval()
    tokens = dpt_tokens(head, dims, 5, 3, 4)  # 5 views, 3x4 patches
    sizes = []

    def heads(chunk_tokens: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        sizes.append(chunk_tokens[0].shape[0])
        pts, conf = postprocess(head(chunk_tokens, (48, 64)))
        return {"pts": pts, "conf": conf}

    with torch.no_grad():
        whole = heads(tokens)
        sizes.clear()
        chunked = run_in_view_chunks(heads, tokens, chunk)
    step = chunk or 5
    assert sizes == [min(step, 5 - start) for start in range(0, 5, step)]
    assert chunked.keys() == whole.keys()
    for key in whole:
        assert chunked[key].shape == whole[key].shape
        torch.testing.assert_close(chunked[key], whole[key], rtol=0, atol=1e-6)
