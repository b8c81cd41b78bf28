"""The distillation loss: formula (against explicit loops), scale invariance, weights, masks, degenerate inputs."""

from __future__ import annotations

import math

import pytest
import torch

from d3r.config import TrainConfig
from d3r.train.loss import COMPONENTS, DistillLoss, build_loss

B, N, H, W = 2, 3, 2, 3


def make_pair(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random student and teacher outputs, teacher with one NaN pixel and one low-confidence pixel."""
    g = torch.Generator().manual_seed(seed)
    student = {
        "pts3d_global": torch.randn(B, N, H, W, 3, generator=g, dtype=torch.float64),
        "conf_global": 1 + 5 * torch.rand(B, N, H, W, generator=g, dtype=torch.float64),
        "pts3d_local": torch.randn(B, N, H, W, 3, generator=g, dtype=torch.float64) + torch.tensor([0, 0, 3.0]),
        "conf_local": 1 + 5 * torch.rand(B, N, H, W, generator=g, dtype=torch.float64),
    }
    teacher = {
        "pts3d_global": 2 * torch.randn(B, N, H, W, 3, generator=g, dtype=torch.float64),
        "conf_global": 1 + 20 * torch.rand(B, N, H, W, generator=g, dtype=torch.float64),
        "pts3d_local": torch.randn(B, N, H, W, 3, generator=g, dtype=torch.float64) + torch.tensor([0, 0, 2.0]),
        "conf_local": 1 + 20 * torch.rand(B, N, H, W, generator=g, dtype=torch.float64),
    }
    teacher["pts3d_local"][0, 1, 1, 2, 0] = float("nan")
    teacher["conf_global"][1, 2, 0, 0] = 0.05
    return student, teacher


def avg_distance(points, valid, views):
    """Mean ‖x‖ over the valid pixels of ``views`` of one sample's ``points [N, H, W, 3]``."""
    dists = [float(points[v, y, x].norm()) for (v, y, x), ok in valid.items() if ok and v in views]
    return max(sum(dists) / max(len(dists), 1), 1e-8)


def reference_loss(student, teacher, variant, conf_weighting, conf_supervision, gamma, alpha_logc=0.2):
    """The formula, one pixel at a time, in Python floats."""
    ag, al = 2.0, 1.0
    totals = []
    for b in range(B):
        valid = {}
        for v in range(N):
            for y in range(H):
                for x in range(W):
                    vals = [teacher[k][b, v, y, x] for k in teacher]
                    finite = all(bool(torch.isfinite(t).all()) for t in vals)
                    valid[v, y, x] = finite and float(teacher["conf_global"][b, v, y, x]) > 0.1

        total = 0.0
        conf_sum = {}
        for head, alpha in (("global", ag), ("local", al)):
            s_pts, t_pts = student[f"pts3d_{head}"], teacher[f"pts3d_{head}"]
            s_conf, t_conf = student[f"conf_{head}"], teacher[f"conf_{head}"]
            head_sum = 0.0
            conf_abs, conf_count = 0.0, 0
            for v in range(N):
                views = [v] if head == "local" else list(range(N))
                zs, zt = avg_distance(s_pts[b], valid, views), avg_distance(t_pts[b], valid, views)
                num, count = 0.0, 0
                for y in range(H):
                    for x in range(W):
                        if not valid[v, y, x]:
                            continue
                        diff = s_pts[b, v, y, x] / zs - t_pts[b, v, y, x] / zt
                        sq = float((diff**2).sum())
                        cs, ct = float(s_conf[b, v, y, x]), float(t_conf[b, v, y, x])
                        w = {"teacher": min(max(ct / 10, 0.1), 1.0), "student": min(max(cs / 10, 0.1), 1.0),
                             "none": 1.0}[conf_weighting]
                        if variant == "paper":
                            num += w * sq
                            conf_abs += abs(cs - ct)
                        else:
                            num += w * (cs * math.sqrt(sq) - alpha_logc * math.log(cs))
                            conf_abs += abs(math.log(cs) - math.log(ct))
                        count += 1
                        conf_count += 1
                head_sum += num / (count + 1e-8)
            total += alpha * head_sum / N
            conf_sum[head] = conf_abs / max(conf_count, 1)
        if conf_supervision:
            total += gamma * 0.5 * (conf_sum["global"] + conf_sum["local"])
        totals.append(total)
    return sum(totals) / B


@pytest.mark.parametrize(
    ("variant", "conf_weighting", "conf_supervision"),
    [
        ("paper", "teacher", True),
        ("paper", "none", True),
        ("paper", "student", False),
        ("paper", "teacher", False),
        ("robust", "teacher", True),
        ("robust", "student", True),
        ("robust", "none", False),
    ],
)
def test_matches_explicit_loops(variant, conf_weighting, conf_supervision):
    student, teacher = make_pair()
    gamma = 0.3
    loss = DistillLoss(variant, conf_weighting, conf_supervision, gamma_conf=gamma)
    total, components = loss(student, teacher)
    expected = reference_loss(student, teacher, variant, conf_weighting, conf_supervision, gamma)
    assert total.item() == pytest.approx(expected, rel=1e-10)
    assert set(components) == set(COMPONENTS) == {"global", "local", "logc_global", "logc_local", "conf"}
    assert all(c.ndim == 0 for c in components.values())


def test_paper_defaults_are_the_reference_weights():
    loss = DistillLoss("paper")
    assert (loss.alpha["global"], loss.alpha["local"], loss.gamma_conf) == (2.0, 1.0, 0.001)
    student, teacher = make_pair(1)
    total, c = loss(student, teacher)
    assert total.item() == pytest.approx(2 * c["global"].item() + c["local"].item() + 0.001 * c["conf"].item())
    assert c["logc_global"].item() == 0 and c["logc_local"].item() == 0


@pytest.mark.parametrize("variant", ["paper", "robust"])
@pytest.mark.parametrize("scale", [1e-3, 0.37, 7.5, 1e3])
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_scale_invariance(variant, scale, side):
    student, teacher = make_pair(2)
    loss = DistillLoss(variant)
    base, _ = loss(student, teacher)
    scaled = dict(student if side == "student" else teacher)
    scaled["pts3d_global"] = scaled["pts3d_global"] * scale
    scaled["pts3d_local"] = scaled["pts3d_local"] * scale
    pair = (scaled, teacher) if side == "student" else (student, scaled)
    total, _ = loss(*pair)
    assert total.item() == pytest.approx(base.item(), rel=1e-9)


def one_bad_pixel_pair(teacher_conf: float, student_conf: float = 2.0):
    """Identical student and teacher except the student's points at pixel (0, 0, 0, 0)."""
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(1, 1, 2, 2, 3, generator=g, dtype=torch.float64)
    teacher = {"pts3d_global": pts, "pts3d_local": pts.clone(),
               "conf_global": torch.full((1, 1, 2, 2), 20.0, dtype=torch.float64),
               "conf_local": torch.full((1, 1, 2, 2), 20.0, dtype=torch.float64)}
    teacher["conf_global"][0, 0, 0, 0] = teacher_conf
    teacher["conf_local"][0, 0, 0, 0] = teacher_conf
    student = {k: v.clone() for k, v in teacher.items()}
    student["conf_global"].fill_(student_conf)
    student["conf_local"].fill_(student_conf)
    bad = student["pts3d_global"][0, 0, 0, 0].clone()
    # keep the mean distance unchanged by rotating the point (its norm is preserved)
    student["pts3d_global"][0, 0, 0, 0] = bad[[1, 2, 0]]
    student["pts3d_local"][0, 0, 0, 0] = bad[[1, 2, 0]]
    return student, teacher


@pytest.mark.parametrize(
    ("teacher_conf", "expected_weight"), [(50.0, 1.0), (10.0, 1.0), (5.0, 0.5), (2.5, 0.25), (0.5, 0.1)]
)
@pytest.mark.parametrize("variant", ["paper", "robust"])
def test_teacher_confidence_weight(variant, teacher_conf, expected_weight):
    loss = DistillLoss(variant, conf_weighting="teacher")
    _, full = loss(*one_bad_pixel_pair(100.0))
    _, weighted = loss(*one_bad_pixel_pair(teacher_conf))
    for head in ("global", "local"):
        assert full[head].item() > 0
        assert weighted[head].item() == pytest.approx(expected_weight * full[head].item(), rel=1e-9)


def test_student_and_no_weighting():
    none = DistillLoss("paper", conf_weighting="none")
    assert none(*one_bad_pixel_pair(2.0))[1]["global"].item() == pytest.approx(
        none(*one_bad_pixel_pair(100.0))[1]["global"].item())
    student = DistillLoss("paper", conf_weighting="student")
    high = student(*one_bad_pixel_pair(2.0, student_conf=30.0))[1]["global"].item()
    low = student(*one_bad_pixel_pair(100.0, student_conf=3.0))[1]["global"].item()
    assert low == pytest.approx(0.3 * high, rel=1e-9)


def test_student_weight_is_detached():
    s, t = one_bad_pixel_pair(2.0, student_conf=3.0)
    s["conf_global"].requires_grad_(True)
    s["pts3d_global"].requires_grad_(True)
    _, c = DistillLoss("paper", conf_weighting="student")(s, t)
    c["global"].backward()
    assert s["pts3d_global"].grad.abs().sum() > 0
    assert s["conf_global"].grad is None or torch.all(s["conf_global"].grad == 0)


@pytest.mark.parametrize("variant", ["paper", "robust"])
def test_invalid_teacher_pixels_do_not_contribute(variant):
    student, teacher = make_pair(4)
    loss = DistillLoss(variant)
    nan_teacher = {k: v.clone() for k, v in teacher.items()}
    nan_teacher["pts3d_global"][1, 0, 1, 1] = float("nan")
    low_conf_teacher = {k: v.clone() for k, v in teacher.items()}
    low_conf_teacher["conf_global"][1, 0, 1, 1] = 0.01
    other_student = {k: v.clone() for k, v in student.items()}
    other_student["pts3d_global"][1, 0, 1, 1] = 1e6
    other_student["conf_local"][1, 0, 1, 1] = 1e6
    with_nan = loss(student, nan_teacher)[0]
    assert torch.isfinite(with_nan)
    assert with_nan.item() == pytest.approx(loss(student, low_conf_teacher)[0].item(), rel=1e-12)
    assert with_nan.item() == pytest.approx(loss(other_student, nan_teacher)[0].item(), rel=1e-12)
    assert with_nan.item() != pytest.approx(loss(student, teacher)[0].item(), rel=1e-6)


@pytest.mark.parametrize("variant", ["paper", "robust"])
def test_empty_mask_contributes_zero_with_finite_gradients(variant):
    student, teacher = make_pair(5)
    for v in student.values():
        v.requires_grad_(True)
    loss = DistillLoss(variant)
    empty = {k: v.clone() for k, v in teacher.items()}
    empty["pts3d_global"][1] = float("nan")
    total, components = loss(student, empty)
    alone = {k: v[:1] for k, v in student.items()}, {k: v[:1] for k, v in teacher.items()}
    assert total.item() == pytest.approx(loss(*alone)[0].item() / 2, rel=1e-12)
    total.backward()
    assert all(torch.isfinite(v.grad).all() and torch.all(v.grad[1] == 0) for v in student.values())

    all_nan = {k: torch.full_like(v, float("nan")) for k, v in teacher.items()}
    total, components = loss(student, all_nan)
    assert total.item() == 0 and all(c.item() == 0 for c in components.values())


def test_identical_inputs():
    student, teacher = make_pair(6)
    total, components = DistillLoss("paper")(teacher, teacher)
    assert total.item() == 0.0
    robust = DistillLoss("robust", alpha_logc=0.2)
    total, c = robust(teacher, teacher)
    assert c["global"].item() == 0 and c["local"].item() == 0 and c["conf"].item() == 0
    assert c["logc_global"].item() < 0
    assert total.item() == pytest.approx(2 * c["logc_global"].item() + c["logc_local"].item(), rel=1e-12)
    expected = reference_loss(teacher, teacher, "robust", "teacher", True, 0.1)
    assert total.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("variant", ["paper", "robust"])
@pytest.mark.parametrize("case", ["zero_student", "zero_both", "single_pixel"])
def test_finite_gradients_on_degenerate_inputs(variant, case):
    student, teacher = make_pair(7)
    student = {k: v.float() for k, v in student.items()}
    teacher = {k: v.float() for k, v in teacher.items()}
    if case in ("zero_student", "zero_both"):
        student["pts3d_global"] = torch.zeros_like(student["pts3d_global"])
        student["pts3d_local"] = torch.zeros_like(student["pts3d_local"])
    if case == "zero_both":
        teacher["pts3d_global"] = torch.zeros_like(teacher["pts3d_global"])
        teacher["pts3d_local"] = torch.zeros_like(teacher["pts3d_local"])
    if case == "single_pixel":
        teacher["conf_global"].fill_(0.0)
        teacher["conf_global"][0, 0, 0, 0] = 5.0
    for v in student.values():
        v.requires_grad_(True)
    total, components = DistillLoss(variant)(student, teacher)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(c) for c in components.values())
    assert all(torch.isfinite(v.grad).all() for v in student.values())
    if case == "single_pixel":
        grad = student["pts3d_global"].grad
        assert torch.count_nonzero(grad.abs().sum(-1)) <= 1


def test_build_loss_from_config():
    loss = build_loss(TrainConfig(loss="paper", loss_conf_weighting="none", loss_conf_supervision=False,
                                  loss_gamma_conf=0.5, loss_alpha_global=3.0))
    assert (loss.variant, loss.conf_weighting, loss.conf_supervision) == ("paper", "none", False)
    assert (loss.gamma_conf, loss.alpha["global"], loss.alpha["local"]) == (0.5, 3.0, 1.0)
    assert build_loss(TrainConfig()).variant == "robust"


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="variant"):
        DistillLoss("l1")
