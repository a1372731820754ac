"""The distillation objective against the numbered facts of docs/KD_MATH.md, with fixed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdcore.errors import SpecError
from kdcore.losses import LOSSES, LossTerms, kd_loss, softmax_with_temperature

KINDS = ("forward_kl", "reverse_kl", "js", "mse_logits")


def _logits(n: int = 8, c: int = 10, *, seed: int = 0, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, c, generator=g), scale * torch.randn(n, c, generator=g)


def _labels(n: int = 8, c: int = 10, *, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed + 1))


def _kl_by_hand(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """Σ_i P_i (log P_i − log Q_i) per sample in float64, averaged over the batch."""
    log_p = torch.log_softmax(teacher.double() / t, dim=1)
    log_q = torch.log_softmax(student.double() / t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


# --- Fact 7: temperature -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "t, expected",
    [(1.0, [0.629, 0.231, 0.140]), (4.0, [0.406, 0.316, 0.279]), (10.0, [0.362, 0.327, 0.311])],
)
def test_temperature_table(t, expected):
    probs = softmax_with_temperature(torch.tensor([2.0, 1.0, 0.5]), t)
    assert [round(p, 3) for p in probs.tolist()] == expected


def test_temperature_flattens_towards_uniform():
    z = torch.tensor([2.0, 1.0, 0.5])
    tops = [softmax_with_temperature(z, t).max().item() for t in (0.5, 1, 2, 4, 10, 100)]
    assert all(a > b for a, b in zip(tops, tops[1:]))
    torch.testing.assert_close(softmax_with_temperature(z, 1e4), torch.full((3,), 1 / 3), atol=1e-4, rtol=0)


# --- Facts 1 and 8: hard term -------------------------------------------------------------------


@pytest.mark.parametrize("t", [1.0, 4.0, 10.0])
def test_worked_ce_example_at_t1_whatever_the_temperature(t):
    probs = torch.full((10,), 0.4 / 9)
    probs[4] = 0.6
    student = probs.log().unsqueeze(0)
    terms = kd_loss(student, torch.zeros(1, 10), torch.tensor([4]), temperature=t, alpha=1.0)
    assert round(terms.hard.item(), 3) == 0.511
    assert terms.hard.item() == pytest.approx(-math.log(0.6), abs=1e-6)


def test_alpha_one_is_exactly_cross_entropy():
    s, t = _logits()
    y = _labels()
    terms = kd_loss(s, t, y, temperature=4.0, alpha=1.0)
    assert torch.equal(terms.total, F.cross_entropy(s, y))
    assert torch.equal(terms.hard, F.cross_entropy(s, y))


def test_ce_gradient_is_softmax_minus_onehot():
    s, t = _logits(n=4)
    y = _labels(n=4)
    s.requires_grad_()
    kd_loss(s, t, y, alpha=1.0).total.backward()
    expected = (torch.softmax(s.detach(), dim=1) - F.one_hot(y, 10).float()) / 4  # batch mean
    torch.testing.assert_close(s.grad, expected, atol=1e-7, rtol=1e-5)


# --- Facts 2, 3, 6: the KL ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("t", [1.0, 4.0, 16.0])
def test_kl_is_non_negative(seed, t):
    s, te = _logits(n=64, seed=seed, scale=3.0)
    assert LOSSES.get("forward_kl")(s, te, t).item() >= 0
    assert kd_loss(s, te, None, temperature=t, alpha=0.0).soft.item() >= 0


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "js", "mse_logits"])
def test_divergence_is_zero_on_equal_logits(kind):
    s, _ = _logits(n=16, scale=5.0)
    terms = kd_loss(s, s.clone(), None, temperature=4.0, alpha=0.0, kind=kind)
    assert abs(terms.soft.item()) <= 1e-7
    assert abs(LOSSES.get(kind)(s, s.clone(), 4.0).item()) <= 1e-7


def test_kl_is_cross_entropy_minus_entropy():
    s, te = _logits(n=16)
    t = 4.0
    log_p = torch.log_softmax(te.double() / t, dim=1)
    log_q = torch.log_softmax(s.double() / t, dim=1)
    cross_entropy = -(log_p.exp() * log_q).sum(dim=1).mean()
    entropy = -(log_p.exp() * log_p).sum(dim=1).mean()
    kl = LOSSES.get("forward_kl")(s, te, t)
    assert kl.item() == pytest.approx((cross_entropy - entropy).item(), abs=1e-5)
    assert cross_entropy.item() > kl.item()  # H(P) > 0 here, so the two really differ


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")
def test_soft_term_is_batchmean_not_mean():
    s, te = _logits(n=8, c=10)
    t = 4.0
    soft = kd_loss(s, te, None, temperature=t, alpha=0.0).soft
    by_hand = t**2 * _kl_by_hand(s, te, t)
    assert soft.item() == pytest.approx(by_hand.item(), rel=1e-5)
    log_q, log_p = torch.log_softmax(s / t, 1), torch.log_softmax(te / t, 1)
    wrong = t**2 * F.kl_div(log_q, log_p, reduction="mean", log_target=True)
    assert soft.item() == pytest.approx(10 * wrong.item(), rel=1e-5)  # "mean" shrinks it C-fold


def test_forward_kl_is_the_default_and_teacher_first():
    s, te = _logits(n=8)
    default = kd_loss(s, te, None, temperature=2.0, alpha=0.0)
    assert default.soft.item() == pytest.approx(4.0 * _kl_by_hand(s, te, 2.0).item(), rel=1e-5)
    # KL is asymmetric on these logits, so swapping the arguments would be caught.
    assert abs(_kl_by_hand(s, te, 2.0).item() - _kl_by_hand(te, s, 2.0).item()) > 1e-3


def test_reverse_kl_is_student_first():
    s, te = _logits(n=8)
    value = LOSSES.get("reverse_kl")(s, te, 2.0)
    assert value.item() == pytest.approx(_kl_by_hand(te, s, 2.0).item(), rel=1e-5)


def test_forward_kl_is_mass_covering_and_reverse_kl_is_not():
    teacher = torch.tensor([[0.0, 0.0, -30.0]])  # two plausible classes
    forward, reverse = LOSSES.get("forward_kl"), LOSSES.get("reverse_kl")
    values = []
    for drop in (10.0, 20.0, 40.0):  # the student ignores class 1 more and more
        student = torch.tensor([[0.0, -drop, -30.0]])
        values.append(forward(student, teacher, 1.0).item())
        assert forward(student, teacher, 1.0).item() > 6 * reverse(student, teacher, 1.0).item()
        assert reverse(student, teacher, 1.0).item() == pytest.approx(math.log(2), abs=1e-3)
    # Forward KL grows without bound (≈ drop / 2 here).
    assert values[0] < values[1] < values[2]
    assert values[2] == pytest.approx(20 - math.log(2) / 2 - math.log(2) / 2, abs=0.1)


def test_teacher_logits_get_no_gradient():
    s, te = _logits(n=4)
    s.requires_grad_()
    te.requires_grad_()
    kd_loss(s, te, _labels(n=4)).total.backward()
    assert te.grad is None
    assert s.grad is not None


# --- Fact 5: gradients and the T² factor --------------------------------------------------------


@pytest.mark.parametrize("t", [1.0, 4.0, 10.0])
def test_kl_gradient_is_q_minus_p_over_t(t):
    n = 4
    s, te = _logits(n=n)
    s.requires_grad_()
    LOSSES.get("forward_kl")(s, te, t).backward()
    q = torch.softmax(s.detach() / t, dim=1)
    p = torch.softmax(te / t, dim=1)
    torch.testing.assert_close(s.grad, (q - p) / t / n, atol=1e-7, rtol=1e-4)

    scaled = s.detach().clone().requires_grad_()
    kd_loss(scaled, te, None, temperature=t, alpha=0.0).total.backward()
    torch.testing.assert_close(scaled.grad, t * (q - p) / n, atol=1e-6, rtol=1e-4)


def test_t_squared_keeps_the_soft_gradient_scale():
    # One random 10-class sample, as in docs/KD_MATH.md's check (0.67 → 0.0027; T²·KL within 0.67–0.75).
    s, te = _logits(n=1, seed=0, scale=2.0)
    plain, scaled = {}, {}
    for t in (1.0, 2.0, 4.0, 8.0, 16.0):
        x = s.clone().requires_grad_()
        LOSSES.get("forward_kl")(x, te, t).backward()
        plain[t] = x.grad.norm().item()
        x = s.clone().requires_grad_()
        kd_loss(x, te, None, temperature=t, alpha=0.0).total.backward()
        scaled[t] = x.grad.norm().item()
    assert 0.3 < plain[1.0] < 2.0
    assert 1e-3 < plain[16.0] < 1e-2
    assert 150 < plain[1.0] / plain[16.0] < 400  # ≈ 16² = 256: falls like 1/T²
    band = [scaled[t] for t in (2.0, 4.0, 8.0, 16.0)]
    assert max(band) / min(band) < 1.5
    assert 0.3 < min(band) and max(band) < 2.0


# --- Fact 4: numerics ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_inputs_give_float32_terms(dtype, kind):
    s32, t32 = _logits(n=8, scale=3.0)
    y = _labels(n=8)
    s16, t16 = s32.to(dtype).requires_grad_(), t32.to(dtype)
    terms = kd_loss(s16, t16, y, temperature=4.0, alpha=0.3, kind=kind)
    assert terms.total.dtype == terms.hard.dtype == terms.soft.dtype == torch.float32
    # Same numbers as float32 on the rounded inputs: the upcast happens before any softmax.
    ref = kd_loss(s16.detach().float(), t16.float(), y, temperature=4.0, alpha=0.3, kind=kind)
    torch.testing.assert_close(terms.total, ref.total, rtol=1e-6, atol=1e-6)
    # And close to the float32 computation on the original logits.
    full = kd_loss(s32, t32, y, temperature=4.0, alpha=0.3, kind=kind)
    torch.testing.assert_close(terms.total, full.total, rtol=5e-2, atol=5e-2)
    terms.total.backward()
    assert s16.grad is not None and s16.grad.dtype == dtype


def test_extreme_logits_stay_finite():
    s = torch.tensor([[1000.0, -1000.0, 0.0]])
    te = torch.tensor([[-1000.0, 1000.0, 0.0]])
    for kind in KINDS:
        assert torch.isfinite(kd_loss(s, te, None, temperature=1.0, alpha=0.0, kind=kind).soft)


# --- Options: alpha, labels, js, mse_logits -----------------------------------------------------


def test_total_mixes_hard_and_soft_with_alpha():
    s, te = _logits()
    y = _labels()
    terms = kd_loss(s, te, y, temperature=4.0, alpha=0.3)
    assert isinstance(terms, LossTerms)
    assert terms.total.item() == pytest.approx(0.3 * terms.hard.item() + 0.7 * terms.soft.item(), rel=1e-6)
    assert terms.hard.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert terms.soft.item() == pytest.approx(16 * _kl_by_hand(s, te, 4.0).item(), rel=1e-5)


def test_alpha_zero_without_labels():
    s, te = _logits()
    terms = kd_loss(s, te, None, temperature=4.0, alpha=0.0)
    assert terms.hard.item() == 0.0
    assert torch.equal(terms.total, terms.soft)
    assert terms.soft.item() > 0


def test_labels_required_when_alpha_positive():
    s, te = _logits()
    with pytest.raises(ValueError, match="labels"):
        kd_loss(s, te, None, alpha=0.3)


def test_js_is_symmetric_and_bounded():
    s, te = _logits(n=16, scale=3.0)
    js = LOSSES.get("js")
    assert js(s, te, 2.0).item() == pytest.approx(js(te, s, 2.0).item(), rel=1e-6)
    # Against a float64 computation from the definition.
    p, q = torch.softmax(te.double() / 2, 1), torch.softmax(s.double() / 2, 1)
    m = (p + q) / 2
    by_hand = 0.5 * ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)).mean()
    assert js(s, te, 2.0).item() == pytest.approx(by_hand.item(), rel=1e-5)
    # Disjoint distributions reach the bound log 2, scaled by T² in the soft term.
    far_s = torch.tensor([[100.0, -100.0]])
    far_t = torch.tensor([[-100.0, 100.0]])
    for t in (1.0, 4.0):
        soft = kd_loss(far_s, far_t, None, temperature=t, alpha=0.0, kind="js").soft.item()
        assert soft <= t**2 * math.log(2) + 1e-5
    assert kd_loss(far_s, far_t, None, temperature=1.0, alpha=0.0, kind="js").soft.item() == pytest.approx(
        math.log(2), abs=1e-5
    )
    assert kd_loss(s, te, None, temperature=4.0, alpha=0.0, kind="js").soft.item() < 16 * math.log(2)


def test_mse_logits_value_ignores_temperature():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    te = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, -1.0]])
    expected = ((0 + 4 + 9) + (1 + 1 + 1)) / 2  # batch mean of the per-sample sum: 8.0
    for t in (1.0, 4.0, 10.0):
        assert kd_loss(s, te, None, temperature=t, alpha=0.0, kind="mse_logits").soft.item() == pytest.approx(expected)


# --- Input validation ---------------------------------------------------------------------------


def test_rejects_bad_inputs():
    s, te = _logits(n=4)
    y = _labels(n=4)
    with pytest.raises(ValueError, match="shape"):
        kd_loss(s, te[:, :5], y)
    with pytest.raises(ValueError, match="shape"):
        kd_loss(s, te[:3], y)
    with pytest.raises(ValueError, match="N×C"):
        kd_loss(s[0], te[0], y)
    with pytest.raises(ValueError, match="labels"):
        kd_loss(s, te, y[:3])
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            kd_loss(s, te, y, temperature=bad)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, te, y, alpha=1.5)
    with pytest.raises(SpecError):
        kd_loss(s, te, y, kind="cosine")


def test_registry_names():
    assert set(KINDS) <= set(LOSSES.names())
