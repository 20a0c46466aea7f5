"""Losses on tiny hand-checked inputs; expected values come from explicit loops, not the code."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cxrlib import losses as L


def _log_softmax_maps(x):  # (B, 1, H, W) -> log-probabilities over pixels
    return F.log_softmax(x.flatten(1), dim=1).reshape(x.shape)


# --------------------------------------------------------------------------- saliency KL


def test_saliency_kl_of_a_map_with_itself_is_zero():
    p = _log_softmax_maps(torch.randn(2, 1, 4, 5))
    assert L.saliency_kl(p, p.exp() * 7.0).item() == pytest.approx(0.0, abs=1e-6)


def test_saliency_kl_hand_example():
    # target [1, 3] -> [1/4, 3/4]; prediction uniform [1/2, 1/2]; second image identical maps.
    log_pred = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]])).reshape(2, 1, 1, 2)
    target = torch.tensor([[1.0, 3.0], [2.0, 6.0]]).reshape(2, 1, 1, 2)
    kl_first = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert L.saliency_kl(log_pred, target).item() == pytest.approx(kl_first / 2, rel=1e-5)


def test_saliency_kl_equals_kldivloss_batchmean():
    g = torch.Generator().manual_seed(0)
    log_pred = _log_softmax_maps(torch.randn(3, 1, 6, 4, generator=g))
    target = torch.rand(3, 1, 6, 4, generator=g)
    target[0, 0, :2] = 0  # zeros in the target: 0 log 0 = 0
    t = target.flatten(1) / target.flatten(1).sum(1, keepdim=True)
    ref = torch.nn.KLDivLoss(reduction="batchmean")(log_pred.flatten(1), t)
    assert torch.allclose(L.saliency_kl(log_pred, target), ref, atol=1e-6)


@pytest.mark.parametrize("bad", ["zero", "negative", "shape"])
def test_saliency_kl_rejects_bad_targets(bad):
    log_pred = _log_softmax_maps(torch.randn(2, 1, 3, 3))
    target = torch.rand(2, 1, 3, 3)
    if bad == "zero":
        target[1] = 0
    elif bad == "negative":
        target[0, 0, 0, 0] = -1
    else:
        target = target[:, :, :2]
    with pytest.raises(ValueError, match="gaze"):  # the message names the gaze map (the truth)
        L.saliency_kl(log_pred, target)


def test_classification_ce_matches_torch():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    assert torch.allclose(L.classification_ce(logits, labels), F.cross_entropy(logits, labels))


# --------------------------------------------------------------------------- uncertainty weighting


def test_uncertainty_loss_at_init_and_gradients():
    module = L.UncertaintyWeightedLoss()
    ce, kl = torch.tensor(0.7), torch.tensor(1.3)
    out = module(ce, kl)
    assert out.item() == pytest.approx(0.7 + math.log(2) + 1.3 / 2 + math.log(2), rel=1e-6)
    out.backward()
    # d/dl [ce e^(-2l) + log(e^l + 1)] at l = 0 is -2 ce + 1/2.
    assert module.log_sigma_c.grad.item() == pytest.approx(-2 * 0.7 + 0.5, rel=1e-6)
    assert module.log_sigma_s.grad is None and not module.log_sigma_s.requires_grad


def test_uncertainty_loss_can_learn_saliency_sigma():
    module = L.UncertaintyWeightedLoss(learn_saliency_sigma=True)
    module(torch.tensor(0.7), torch.tensor(1.3)).backward()
    # d/dl [kl e^(-2l) / 2 + log(e^l + 1)] at l = 0 is -kl + 1/2.
    assert module.log_sigma_s.grad.item() == pytest.approx(-1.3 + 0.5, rel=1e-6)


# --------------------------------------------------------------------------- triplet


def test_triplet_zero_when_classes_are_far_apart_and_positive_when_not():
    labels = torch.tensor([0, 0, 1, 1])
    far = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]])
    near = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.2, 0.0], [0.7, 0.0]])
    assert L.triplet_all(far, labels).item() == 0.0
    assert L.triplet_all(near, labels).item() > 0.0


def test_triplet_hand_example():
    # 1-D points 0, 1 (class 0) and 3 (class 1); margin 2. Valid triplets (a, p, n):
    # (0, 1, 3): 1 - 3 + 2 = 0;  (1, 0, 3): 1 - 2 + 2 = 1.  Class 1 has no positive.
    e, y = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([0, 0, 1])
    assert L.triplet_all(e, y, margin=2.0).item() == pytest.approx(1.0, abs=1e-5)  # the code's sum
    assert L.triplet_all(e, y, margin=2.0, reduction="mean").item() == pytest.approx(0.5, abs=1e-5)


def _triplet_by_triplet(e, y, margin=1.0):
    """The paper code's loop: TripletMarginLoss on each (anchor, positive, negative), summed."""
    module = torch.nn.TripletMarginLoss(margin=margin, p=2)
    total, count = 0, 0
    for a, p, n in itertools.product(range(len(y)), repeat=3):
        if a != p and y[a] == y[p] and y[n] != y[a]:
            total = total + module(e[a : a + 1], e[p : p + 1], e[n : n + 1])
            count += 1
    return total, count


@pytest.mark.parametrize("shape", [(7, 5), (7, 3, 2, 4), (7, 6, 3, 1), (7, 2, 4, 5)])
def test_triplet_matches_torch_triplet_by_triplet(shape):
    """(B, D) vectors and unpooled (B, C, h, w) maps, values and gradients, both reductions."""
    g = torch.Generator().manual_seed(sum(shape))
    y = torch.tensor([0, 1, 2, 0, 1, 0, 2])
    e = torch.randn(*shape, generator=g).requires_grad_()
    ref, count = _triplet_by_triplet(e, y, margin=0.7)
    got = L.triplet_all(e, y, margin=0.7)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    grad_got, = torch.autograd.grad(got, e)
    grad_ref, = torch.autograd.grad(ref, e)
    assert torch.allclose(grad_got, grad_ref, atol=1e-5)
    mean = L.triplet_all(e, y, margin=0.7, reduction="mean")
    assert mean.item() == pytest.approx(ref.item() / count, rel=1e-5)


def test_triplet_map_is_not_the_pooled_loss():
    """The code's unpooled map and the pooled vector are different losses (issue: feature switch)."""
    g = torch.Generator().manual_seed(3)
    e, y = torch.randn(6, 4, 3, 3, generator=g), torch.tensor([0, 0, 1, 1, 2, 2])
    assert not math.isclose(L.triplet_all(e, y).item(), L.triplet_all(e.mean(dim=(2, 3)), y).item(), rel_tol=1e-3)
    with pytest.raises(ValueError, match="reduction"):
        L.triplet_all(e, y, reduction="max")


@pytest.mark.parametrize("name", ["triplet", "supcon"])
def test_no_valid_pair_gives_zero_with_grad(name):
    e = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 0]) if name == "triplet" else torch.tensor([0, 1, 2])
    loss = L.contrastive_loss(name, e, labels)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(e.grad, torch.zeros_like(e))


# --------------------------------------------------------------------------- SupCon / NT-Xent


def _supcon_loop(e, y, t):
    z = F.normalize(e, dim=1).tolist()
    dot = lambda i, j: sum(a * b for a, b in zip(z[i], z[j])) / t  # noqa: E731
    per_anchor = []
    for i in range(len(z)):
        pos = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(dot(i, a)) for a in range(len(z)) if a != i)
        per_anchor.append(-sum(math.log(math.exp(dot(i, p)) / denom) for p in pos) / len(pos))
    return sum(per_anchor) / len(per_anchor)


def test_supcon_numeric_example():
    e = torch.tensor([[1.0, 0.2], [0.8, -0.1], [-0.3, 1.0], [0.1, 0.9], [-1.0, -1.0]])
    y = [0, 0, 1, 1, 2]  # the last anchor has no positive and is left out
    got = L.supcon(e, torch.tensor(y), temperature=0.5)
    assert got.item() == pytest.approx(_supcon_loop(e, y, 0.5), rel=1e-5)


def test_supcon_lower_for_clustered_embeddings_and_finite_gradient():
    g = torch.Generator().manual_seed(2)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    centres = torch.eye(3, 8) * 5
    e = (centres[y] + 0.1 * torch.randn(9, 8, generator=g)).requires_grad_()
    aligned = L.supcon(e, y)
    shuffled = L.supcon(e, y[torch.tensor([0, 3, 6, 1, 4, 7, 2, 5, 8])])
    assert aligned.item() < shuffled.item()
    aligned.backward()
    assert torch.isfinite(e.grad).all()


def _nt_xent_loop(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1).tolist()
    n, b = len(z), len(z1)
    dot = lambda i, j: sum(a * c for a, c in zip(z[i], z[j])) / t  # noqa: E731
    total = 0.0
    for i in range(n):
        j = (i + b) % n
        denom = sum(math.exp(dot(i, k)) for k in range(n) if k != i)
        total += -math.log(math.exp(dot(i, j)) / denom)
    return total / n


def test_nt_xent_numeric_example():
    z1 = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, -0.2], [0.3, 0.3, 1.0]])
    z2 = torch.tensor([[0.9, 0.1, 0.4], [-0.2, 1.0, 0.0], [0.5, -0.1, 0.8]])
    got = L.nt_xent(z1, z2, temperature=0.5)
    assert got.item() == pytest.approx(_nt_xent_loop(z1, z2, 0.5), rel=1e-5)


def test_nt_xent_lower_for_aligned_views():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(8, 16, generator=g)
    z2 = z1 + 0.05 * torch.randn(8, 16, generator=g)
    assert L.nt_xent(z1, z2).item() < L.nt_xent(z1, z2.roll(1, dims=0)).item()
    with pytest.raises(ValueError):
        L.nt_xent(z1, z2[:, :4])


# --------------------------------------------------------------------------- dispatch and gather


def test_dispatch():
    e, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    got = L.contrastive_loss("triplet", e, y, margin=0.5)
    assert torch.equal(got, L.triplet_all(e, y, margin=0.5))
    assert torch.equal(L.contrastive_loss("ntxent", e, e.flip(0)), L.nt_xent(e, e.flip(0)))
    assert set(L.CONTRASTIVE_LOSSES) == {"triplet", "supcon", "ntxent"}
    with pytest.raises(ValueError, match="triplet.*supcon.*ntxent"):
        L.contrastive_loss("simclr", e, y)


@pytest.mark.parametrize("name", ["triplet", "supcon"])
def test_gather_hook_for_label_losses(name):
    e, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    remote_e, remote_y = torch.randn(4, 3), torch.tensor([1, 1, 0, 2])
    calls = []

    def gather(emb, lab):
        calls.append(len(emb))
        return torch.cat([emb, remote_e]), torch.cat([lab, remote_y])

    got = L.contrastive_loss(name, e, y, gather=gather)
    assert calls == [4]
    ref = L.contrastive_loss(name, torch.cat([e, remote_e]), torch.cat([y, remote_y]))
    assert torch.allclose(got, ref)


def test_gather_hook_for_nt_xent():
    z1, z2 = torch.randn(3, 5), torch.randn(3, 5)
    remote = [torch.randn(3, 5), torch.randn(3, 5)]  # what other ranks hold, per view
    calls = []

    def gather(z):
        calls.append(z.clone())
        return torch.cat([z, remote[len(calls) - 1]])

    got = L.nt_xent(z1, z2, gather=gather)
    assert len(calls) == 2 and torch.equal(calls[0], z1) and torch.equal(calls[1], z2)
    ref = L.nt_xent(torch.cat([z1, remote[0]]), torch.cat([z2, remote[1]]))
    assert torch.allclose(got, ref)
