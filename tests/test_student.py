"""The student: preset sizes, encoder checkpoint loading, shapes, batching, ids, gradients, errors."""

from __future__ import annotations

import argparse

import pytest
import torch

from d3r.checkpoints import CheckpointError
from d3r.config import StudentConfig
from d3r.student import (
    build_student,
    build_student_from_config,
    load_encoder_weights,
    parameter_breakdown,
)
from d3r.teachers.base import OUTPUT_KEYS


def meta_counts(preset: str) -> dict[str, int]:
    with torch.device("meta"):
        return parameter_breakdown(build_student(preset))


def test_distill3r_s_matches_the_reference_breakdown():
    counts = meta_counts("distill3r-s")
    assert counts["total"] == pytest.approx(71.97e6, rel=0.01)
    assert counts["encoder"] == pytest.approx(21.93e6, rel=0.005)
    assert counts["fusion"] == pytest.approx(10.80e6, rel=0.005)
    assert counts["heads"] == pytest.approx(2 * 19.62e6, rel=0.005)


def test_d3r_s_and_tiny_sizes():
    assert meta_counts("d3r-s")["total"] <= 40e6
    assert meta_counts("d3r-s")["heads"] < 0.2 * meta_counts("distill3r-s")["heads"]
    assert parameter_breakdown(build_student("tiny"))["total"] < 2e6


def randomise(module: torch.nn.Module, seed: int, std: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g))


def encoder_state(seed: int) -> dict[str, torch.Tensor]:
    student = build_student("tiny")
    randomise(student.encoder, seed)
    return {k: v.clone() for k, v in student.encoder.state_dict().items()}


def assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def chunked(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k: v for k, v in state.items()}


@pytest.mark.parametrize("block_chunks", [False, True])
def test_dune_checkpoint_round_trip(tmp_path, block_chunks):
    published = encoder_state(1)
    encoder = chunked(published) if block_chunks else published
    model = {f"module.encoder.{k}": v for k, v in encoder.items()}
    model["module.encoder.mask_token"] = torch.zeros(1, 64)
    model["module._orig_mod.projectors.dino.fc.weight"] = torch.ones(3, 3)
    path = tmp_path / "dune_vitsmall14_448.pth"
    torch.save({"model": model, "args": argparse.Namespace(image_size=448), "iter": 7}, path)

    student = build_student("tiny")
    report = load_encoder_weights(student, path)
    assert_same_state(student.encoder.state_dict(), published)
    assert report.layout == "dune"
    assert (len(report.loaded), report.missing, report.unexpected) == (len(published), [], [])
    assert report.skipped == ["mask_token"]
    assert "loaded" in report.summary()


def test_dinov2_checkpoint_round_trip(tmp_path):
    published = encoder_state(2)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save({**published, "mask_token": torch.zeros(1, 64)}, path)
    student = build_student("tiny")
    report = load_encoder_weights(student, path)
    assert_same_state(student.encoder.state_dict(), published)
    assert report.layout == "dinov2" and report.skipped == ["mask_token"]


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    published = encoder_state(3)
    del published["norm.weight"]
    published["head.weight"] = torch.zeros(2)
    path = tmp_path / "partial.pth"
    torch.save(published, path)
    report = load_encoder_weights(build_student("tiny"), path)
    assert report.missing == ["norm.weight"] and report.unexpected == ["head.weight"]


def test_other_position_grid_is_resized(tmp_path):
    published = encoder_state(4)
    grid = 20
    published["pos_embed"] = torch.randn(1, 1 + grid * grid, 64)
    path = tmp_path / "dinov2_518.pth"
    torch.save(published, path)
    student = build_student("tiny")
    report = load_encoder_weights(student, path)
    assert report.resized == ["pos_embed (20x20 -> 16x16)"]
    assert torch.equal(student.encoder.pos_embed[:, 0], published["pos_embed"][:, 0])


def test_wrong_shapes_and_formats_raise(tmp_path):
    published = encoder_state(5)
    published["blocks.0.attn.qkv.weight"] = torch.zeros(10, 64)
    path = tmp_path / "bad.pth"
    torch.save(published, path)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.weight"):
        load_encoder_weights(build_student("tiny"), path)
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="neither a DUNE"):
        load_encoder_weights(build_student("tiny"), other)
    with pytest.raises(CheckpointError, match="absent.pth does not exist"):
        load_encoder_weights(build_student("tiny"), tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="student.encoder_weights=.*absent.pth does not exist"):
        build_student_from_config(StudentConfig(preset="tiny", encoder_weights=tmp_path / "absent.pth"))


def tiny_student(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    student = build_student("tiny", **overrides)
    randomise(student, seed, std=0.1)
    with torch.no_grad():
        for module in student.modules():
            if hasattr(module, "gamma"):
                module.gamma.fill_(0.5)
    return student.eval()


def images(batch: int, views: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, views, 3, height, width), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize(("views", "height", "width"), [(1, 28, 42), (2, 28, 28), (5, 28, 42), (3, 42, 28)])
def test_output_shapes(views, height, width):
    student = build_student("tiny").eval()
    with torch.no_grad():
        out = student(images(2, views, height, width))
    assert set(out) == set(OUTPUT_KEYS)
    for head in ("global", "local"):
        assert out[f"pts3d_{head}"].shape == (2, views, height, width, 3)
        assert out[f"conf_{head}"].shape == (2, views, height, width)
        assert out[f"conf_{head}"].dtype == torch.float32
        assert torch.isfinite(out[f"pts3d_{head}"]).all()
        assert (out[f"conf_{head}"] >= 1).all()


def test_shared_trunk_layout():
    student = build_student("tiny", head_shared_trunk=True).eval()
    assert hasattr(student.heads, "trunk") and not hasattr(student.heads, "global_head")
    with torch.no_grad():
        out = student(images(1, 2, 28, 42))
    assert out["pts3d_local"].shape == (1, 2, 28, 42, 3)
    assert not torch.allclose(out["pts3d_global"], out["pts3d_local"])


def test_batch_of_scenes_equals_scenes_one_by_one():
    student = tiny_student()
    batch = images(2, 3, 28, 42)
    with torch.no_grad():
        together = student(batch)
        apart = [student(batch[i:i + 1]) for i in range(2)]
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(together[key], torch.cat([a[key] for a in apart]), rtol=1e-4, atol=1e-5)


def test_views_interact_and_ids_matter():
    student = tiny_student()
    batch = images(1, 3, 28, 28)
    with torch.no_grad():
        base = student(batch)["pts3d_global"]
        other_view = batch.clone()
        other_view[:, 2] = 255 - other_view[:, 2]
        changed = student(other_view)["pts3d_global"]
        shifted = student(batch, image_ids=torch.tensor([[0, 5, 9]]))["pts3d_global"]
    assert not torch.allclose(base[:, 0], changed[:, 0], atol=1e-6)
    assert not torch.allclose(base, shifted, atol=1e-6)


def test_head_chunks_and_checkpointing_do_not_change_results():
    batch = images(2, 3, 28, 28)
    reference = tiny_student()
    chunked_heads = tiny_student(head_chunk=2)
    with torch.no_grad():
        expected, got = reference(batch), chunked_heads(batch)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)

    plain, ckpt = tiny_student(), tiny_student(activation_checkpointing=True)
    grads = []
    for model in (plain, ckpt):
        model.train()
        model(batch, image_ids=torch.tensor([[0, 1, 2]] * 2))["pts3d_local"].square().mean().backward()
        grads.append(model.encoder.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_image_ids_modes():
    student = build_student("tiny", image_ids="random").train()
    ids = student.image_ids(4, 6, torch.device("cpu"))
    assert ids.shape == (4, 6) and (ids[:, 0] == 0).all()
    assert all(len(set(row.tolist())) == 6 for row in ids) and (ids[:, 1:] >= 1).all()
    assert (ids < 1000).all()
    student.eval()
    assert torch.equal(student.image_ids(2, 3, torch.device("cpu")), torch.tensor([[0, 1, 2], [0, 1, 2]]))
    with pytest.raises(ValueError, match="max_views"):
        student.image_ids(1, 1001, torch.device("cpu"))
    batch = images(1, 2, 28, 28)
    with pytest.raises(ValueError, match="0..999"):
        student(batch, image_ids=torch.tensor([[0, 1000]]))
    with pytest.raises(ValueError, match="integer"):
        student(batch, image_ids=torch.tensor([[0.0, 1.0]]))


def test_uint8_and_unit_float_inputs_agree():
    student = tiny_student()
    batch = images(1, 2, 28, 28)
    with torch.no_grad():
        a = student(batch)["pts3d_global"]
        b = student(batch.float() / 255.0)["pts3d_global"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter():
    student = build_student("tiny").train()
    out = student(images(2, 2, 28, 28))
    loss = sum(v.float().mean() for v in out.values())
    loss.backward()
    frozen = [name for name, param in student.named_parameters() if not param.requires_grad]
    assert frozen and all("refinenet4.resConfUnit1" in name for name in frozen)
    for name, param in student.named_parameters():
        if not param.requires_grad:
            continue
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert student.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert student.encoder.pos_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(1, 2, 3, 30, 42), (1, 2, 3, 28, 40), (2, 3, 28, 28), (1, 2, 1, 28, 28)])
def test_bad_input_shapes_raise(shape):
    with pytest.raises(ValueError, match="student"):
        build_student("tiny")(torch.zeros(shape))


def test_bad_presets_and_overrides_raise():
    with pytest.raises(ValueError, match="preset"):
        build_student("huge")
    with pytest.raises(ValueError, match="encoder_widht"):
        build_student("tiny", encoder_widht=3)
    with pytest.raises(ValueError, match="head_hooks"):
        build_student("tiny", head_hooks=(0, 1, 2, 9))


def test_build_from_config_loads_encoder(tmp_path):
    published = encoder_state(6)
    path = tmp_path / "enc.pth"
    torch.save(published, path)
    student = build_student_from_config(StudentConfig(preset="tiny", encoder_weights=path, image_ids="sequential"))
    assert_same_state(student.encoder.state_dict(), published)
    assert student.spec.image_ids == "sequential"
