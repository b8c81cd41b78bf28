"""The training loop's parts: schedule horizon, decay groups, accumulation, precision, RNG state."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch

from d3r.config import TrainConfig
from d3r.student import build_student
from d3r.train.loop import (
    StepPlan,
    build_scheduler,
    decays,
    forward_loss,
    lr_factor,
    parameter_groups,
    resolve_precision,
    rng_state,
    set_rng_state,
)
from d3r.train.loss import build_loss


def test_the_horizon_is_the_real_number_of_optimiser_steps():
    plan = StepPlan.from_config(batches_per_epoch=10, grad_accum=3, epochs=4, max_steps=None)
    assert (plan.steps_per_epoch, plan.total_steps) == (3, 12)  # 10 // 3 steps per epoch; the 10th forward unused
    assert StepPlan.from_config(10, 3, 4, max_steps=20).total_steps == 20  # max_steps wins, epochs repeat
    assert plan.position(0) == (0, 0)
    assert plan.position(4) == (1, 3)  # epoch 1, one step (3 forwards) of it consumed
    with pytest.raises(ValueError, match="train.grad_accum=4"):
        StepPlan.from_config(batches_per_epoch=3, grad_accum=4, epochs=1, max_steps=None)


def test_warmup_then_cosine_to_the_floor_at_the_last_step():
    total, warmup, floor = 111, 10, 0.1
    factors = [lr_factor(step, total, warmup, floor) for step in range(total)]
    assert factors[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert factors[warmup - 1] == pytest.approx(1.0)
    assert factors[warmup] == pytest.approx(1.0)
    assert factors[warmup + 50] == pytest.approx(floor + (1 - floor) / 2)  # half way through the cosine
    assert factors[warmup + 25] == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert factors[-1] == pytest.approx(floor)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:], strict=False))
    assert lr_factor(0, 1, 0, floor) == pytest.approx(1.0)  # a one-step run: full rate, no division by 0


def test_the_scheduler_applies_the_schedule_to_the_optimiser():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=2e-3)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_fraction=0.25, min_lr_ratio=0.05)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(2e-3 / 5)
    assert max(lrs) == pytest.approx(2e-3)
    assert lrs[-1] == pytest.approx(2e-3 * 0.05)


def test_no_decay_on_biases_norms_gammas_tokens_and_position_tables():
    student = build_student("tiny")
    decayed, rest = parameter_groups(student, weight_decay=0.05)
    assert decayed["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    named = {name: p for name, p in student.named_parameters() if p.requires_grad}  # the DPT's unused unit is frozen
    ids = {id(p): name for name, p in named.items()}
    decayed_names = {ids[id(p)] for p in decayed["params"]}
    rest_names = {ids[id(p)] for p in rest["params"]}
    assert decayed_names.isdisjoint(rest_names) and decayed_names | rest_names == set(named)
    for name in ("encoder.cls_token", "encoder.pos_embed", "encoder.register_tokens", "encoder.blocks.0.ls1.gamma",
                 "encoder.blocks.0.norm1.weight", "encoder.blocks.0.attn.qkv.bias", "encoder.norm.weight"):
        assert name in rest_names, name
    for name in ("encoder.blocks.0.attn.qkv.weight", "encoder.patch_embed.proj.weight",
                 "heads.global_head.scratch.layer1_rn.weight"):
        assert name in decayed_names, name
    assert not decays(torch.nn.Embedding(4, 8), "weight", torch.nn.Embedding(4, 8).weight)


def fake_batch(batch: int, views: int = 2, size: int = 28, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images and teacher targets of ``batch`` samples: points in front of the camera, confidence ≥ 1."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(batch, views, size, size, 3, generator=g) - 0.5
    points[..., 2] += 2.0
    return {
        "images": torch.randint(0, 256, (batch, views, 3, size, size), dtype=torch.uint8, generator=g),
        "pts3d_global": points, "pts3d_local": points + 0.1,
        "conf_global": 1 + 5 * torch.rand(batch, views, size, size, generator=g),
        "conf_local": 1 + 5 * torch.rand(batch, views, size, size, generator=g),
    }


def gradients(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}


def test_two_micro_batches_of_one_equal_one_batch_of_two():
    torch.manual_seed(0)
    student = build_student("tiny", image_ids="sequential")
    loss_fn = build_loss(TrainConfig())
    batch = fake_batch(2)
    total, _ = forward_loss(student, batch, loss_fn, torch.device("cpu"), "fp32")
    total.backward()
    whole = gradients(student)
    student.zero_grad()
    for index in range(2):
        micro = {key: value[index:index + 1] for key, value in batch.items()}
        total, _ = forward_loss(student, micro, loss_fn, torch.device("cpu"), "fp32")
        (total / 2).backward()
    accumulated = gradients(student)
    assert set(whole) == set(accumulated) and len(whole) > 50
    for name, grad in whole.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-3, atol=1e-6, msg=name)
    assert sum(g.abs().sum() for g in whole.values()) > 0


def test_precision_is_fp32_on_cpu_unless_asked():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"


def test_rng_state_round_trips_through_a_tensors_only_file():
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
