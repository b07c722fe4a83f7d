"""Each loss against a float64 computation written out here, plus the properties the method needs."""

import pytest
import torch

from tas_lite import losses

B, C = 16, 10


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, C, generator=g) * 3, torch.randn(B, C, generator=g) * 3,
            torch.randint(0, C, (B,), generator=g))


def softmax64(z, T=1.0):
    e = torch.exp(z.double() / T - (z.double() / T).max(1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


def test_kd_matches_float64(logits):
    s, t, _ = logits
    p_s, p_t = softmax64(s, 4.0), softmax64(t, 4.0)
    ref = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * 16
    assert torch.allclose(losses.kd(s, t, 4.0).double(), ref, rtol=1e-5)
    assert losses.kd(t, t).abs() < 1e-6


@pytest.mark.parametrize("gamma, T", [(1.0, 1.0), (1.5, 1.0), (2.0, 4.0)])
def test_ofa_matches_authors_formula_in_float64(logits, gamma, T):
    s, t, y = logits
    m = torch.nn.functional.one_hot(y, C).double()
    ref = (-(((softmax64(t, T) + m) ** gamma - m) * softmax64(s, T).log()).sum(1)).mean()
    assert torch.allclose(losses.ofa(s, t, y, gamma, T).double(), ref, rtol=1e-5)


def test_ofa_gamma_one_is_soft_label_cross_entropy(logits):
    s, t, y = logits
    soft_ce = torch.nn.functional.cross_entropy(s, torch.softmax(t, 1))
    assert torch.allclose(losses.ofa(s, t, y, gamma=1.0), soft_ce, atol=1e-6)
    # ... and does not depend on the label at gamma = 1
    assert torch.allclose(losses.ofa(s, t, (y + 1) % C, gamma=1.0), soft_ce, atol=1e-6)


def test_ofa_gamma_above_one_weights_the_target_more(logits):
    s, t, y = logits
    assert not torch.allclose(losses.ofa(s, t, y, 2.0), losses.ofa(s, t, (y + 1) % C, 2.0))


def test_info_nce_matches_float64():
    g = torch.Generator().manual_seed(1)
    fs, ft = torch.randn(B, 32, generator=g), torch.randn(B, 32, generator=g)
    a = fs.double() / fs.double().norm(dim=1, keepdim=True)
    b = ft.double() / ft.double().norm(dim=1, keepdim=True)
    sim = a @ b.T / 0.07
    ref = -(sim.diag() - sim.logsumexp(1)).mean()
    assert torch.allclose(losses.info_nce(fs, ft, 0.07).double(), ref, rtol=1e-5)
    aligned = losses.info_nce(ft, ft, 0.07)
    assert aligned < losses.info_nce(fs, ft, 0.07)


def test_dkd_matches_float64(logits):
    s, t, y = logits
    T, alpha, beta = 4.0, 1.0, 8.0
    gt = torch.nn.functional.one_hot(y, C).bool()
    p_s, p_t = softmax64(s, T), softmax64(t, T)
    b_s = torch.stack([p_s[gt], 1 - p_s[gt]], 1)
    b_t = torch.stack([p_t[gt], 1 - p_t[gt]], 1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean()
    nt_s = p_s.masked_fill(gt, 0) / p_s.masked_fill(gt, 0).sum(1, keepdim=True)
    nt_t = p_t.masked_fill(gt, 0) / p_t.masked_fill(gt, 0).sum(1, keepdim=True)
    nckd = torch.where(gt, 0.0, nt_t * (nt_t.log() - nt_s.log())).sum(1).mean()
    ref = (alpha * tckd + beta * nckd) * T**2
    assert torch.allclose(losses.dkd(s, t, y, alpha, beta, T).double(), ref, rtol=1e-4)


def test_dist_matches_float64(logits):
    s, t, _ = logits
    p_s, p_t = softmax64(s), softmax64(t)

    def pearson_rows(a, b):
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    ref = (1 - pearson_rows(p_s, p_t)).mean() + (1 - pearson_rows(p_s.T, p_t.T)).mean()
    assert torch.allclose(losses.dist(s, t).double(), ref, rtol=1e-5)


@pytest.mark.parametrize("name", ["kd", "ofa", "dkd", "dist", "info_nce"])
def test_finite_values_and_gradients_for_huge_logits(name):
    g = torch.Generator().manual_seed(2)
    s = (torch.randn(B, C, generator=g) * 1e3).requires_grad_()
    t = torch.randn(B, C, generator=g) * 1e3
    y = torch.randint(0, C, (B,), generator=g)
    call = {"kd": lambda: losses.kd(s, t), "ofa": lambda: losses.ofa(s, t, y, 1.5),
            "dkd": lambda: losses.dkd(s, t, y), "dist": lambda: losses.dist(s, t),
            "info_nce": lambda: losses.info_nce(s, t)}[name]
    value = call()
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()


def test_half_precision_inputs_are_computed_in_float32(logits):
    s, t, y = logits
    assert losses.ofa(s.half(), t.half(), y).dtype == torch.float32


@pytest.mark.parametrize("call, match", [
    (lambda: losses.kd(torch.zeros(4, 10), torch.zeros(4, 9)), "same"),
    (lambda: losses.ofa(torch.zeros(4, 10), torch.zeros(4, 10), torch.tensor([0, 1, 2, 10])), r"labels must lie in \[0, 10\)"),
    (lambda: losses.info_nce(torch.zeros(4, 8), torch.zeros(4, 6)), "FeatureProjector"),
    (lambda: losses.kd(torch.zeros(4, 10), torch.zeros(4, 10), temperature=0), "temperature must be > 0"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _tas_outputs(requires_grad=True):
    g = torch.Generator().manual_seed(3)
    out = {}
    for name, dim in (("teacher", 24), ("student", 16), ("assistant", 24)):
        z = torch.randn(B, C, generator=g).requires_grad_(requires_grad)
        f = torch.randn(B, dim, generator=g).requires_grad_(requires_grad)
        out[name] = (z, f)
    return out


def test_tas_loss_has_every_term_and_sums_them():
    crit = losses.TASLoss({"teacher": 24, "student": 16, "assistant": 24})
    out = _tas_outputs()
    y = torch.randint(0, C, (B,))
    total, terms = crit(out, y)
    assert set(terms) == {"ce_s", "ce_a", "nce_ts", "ofa_ts", "nce_ta", "ofa_ta", "nce_as", "ofa_as"}
    assert torch.allclose(total, sum(terms.values()))
    assert torch.allclose(terms["ofa_ta"], losses.ofa(out["assistant"][0], out["teacher"][0], y))


def test_tas_loss_detaches_the_supervising_side():
    crit = losses.TASLoss({"teacher": 24, "student": 16, "assistant": 24})
    out = _tas_outputs()
    y = torch.randint(0, C, (B,))
    _, terms = crit(out, y)
    terms["nce_as"].add(terms["ofa_as"]).backward()  # assistant supervises the student here
    assert out["assistant"][0].grad is None and out["assistant"][1].grad is None
    assert out["student"][0].grad is not None and out["student"][1].grad is not None
    crit_both = losses.TASLoss({"teacher": 24, "student": 16, "assistant": 24}, detach_supervisor=False)
    out = _tas_outputs()
    _, terms = crit_both(out, y)
    terms["ofa_as"].backward()
    assert out["assistant"][0].grad is not None


def test_tas_loss_weights_and_learnable_temperature():
    crit = losses.TASLoss({"teacher": 24, "student": 16, "assistant": 24}, weights={"nce_ts": 0.0})
    total, terms = crit(_tas_outputs(), torch.randint(0, C, (B,)))
    assert torch.allclose(total, sum(v for k, v in terms.items() if k != "nce_ts"))
    total.backward()
    assert crit.projector.log_temperature.grad is not None
    assert abs(crit.projector.temperature.item() - 0.07) < 1e-6
    with pytest.raises(ValueError, match="unknown TAS loss term"):
        losses.TASLoss({"teacher": 2, "student": 2, "assistant": 2}, weights={"nce_xy": 1.0})


def test_info_nce_masked_leaves_same_class_negatives_out_float64():
    """Reference: for each anchor, logsumexp over its positive and the other-class candidates only."""
    g = torch.Generator().manual_seed(4)
    fs, ft = torch.randn(B, 32, generator=g), torch.randn(B, 32, generator=g)
    y = torch.randint(0, 4, (B,), generator=g)
    a = fs.double() / fs.double().norm(dim=1, keepdim=True)
    b = ft.double() / ft.double().norm(dim=1, keepdim=True)
    sim = a @ b.T / 0.07
    keep = (y[:, None] != y[None, :]) | torch.eye(B, dtype=torch.bool)
    ref = -torch.stack([sim[i, i] - sim[i][keep[i]].logsumexp(0) for i in range(B)]).mean()
    masked = losses.info_nce(fs, ft, 0.07, labels=y, negatives="masked")
    assert torch.allclose(masked.double(), ref, rtol=1e-5)
    assert masked < losses.info_nce(fs, ft, 0.07)  # fewer negatives: a lower loss
    distinct = torch.arange(B)  # every image its own class: nothing to mask
    assert torch.allclose(losses.info_nce(fs, ft, 0.07, labels=distinct, negatives="masked"), losses.info_nce(fs, ft, 0.07))
    with pytest.raises(ValueError, match="needs the batch's integer labels"):
        losses.info_nce(fs, ft, negatives="masked")
    with pytest.raises(ValueError, match="allowed: all, masked"):
        losses.info_nce(fs, ft, negatives="queue")


def test_ofa_with_soft_labels_masks_the_argmax_class_as_the_authors_code_does(logits):
    """Mixup/label-smoothing targets: the mask is one_hot(argmax(target)), never the soft label itself;
    with the soft label as mask, gamma 1.5 turns class weights negative."""
    s, t, y = logits
    soft = 0.7 * torch.nn.functional.one_hot(y, C).float() + 0.3 / C
    assert torch.allclose(losses.ofa(s, t, soft, gamma=1.5), losses.ofa(s, t, y, gamma=1.5))
    p_t = torch.softmax(t.double(), 1)
    wrong = (p_t + soft.double()) ** 1.5 - soft.double()
    assert (wrong < 0).any(), "the soft label as mask would give negative weights (why the argmax matters)"


def test_tas_loss_ramps_only_the_assistant_to_student_terms():
    crit = losses.TASLoss({"teacher": 24, "student": 16, "assistant": 24})
    out, y = _tas_outputs(), torch.randint(0, C, (B,))
    full, terms = crit(out, y, ramp=1.0)
    half, _ = crit(out, y, ramp=0.5)
    assert torch.allclose(full - half, 0.5 * (terms["nce_as"] + terms["ofa_as"]), atol=1e-5)
    masked = losses.TASLoss({"teacher": 24, "student": 16, "assistant": 24}, negatives="masked")
    _, masked_terms = masked(out, y)
    assert not torch.allclose(masked_terms["nce_ts"], terms["nce_ts"]) or len(set(y.tolist())) == B
