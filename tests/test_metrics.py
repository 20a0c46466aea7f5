"""Metrics on tiny hand-computed cases, plus agreement with scikit-learn and SciPy."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from cxrlib import metrics as M

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- saliency: identities


def test_identical_maps():
    x = RNG.random((8, 6))
    assert M.cc(x, x) == pytest.approx(1.0)
    assert M.kld(x, x) == pytest.approx(0.0, abs=1e-12)
    assert M.sim(x, x) == pytest.approx(1.0)


def test_constant_maps_score_chance_without_warnings():
    fix = np.zeros((4, 4))
    fix[1, 2] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.nss(np.full((4, 4), 3.0), fix) == 0.0
        assert M.cc(np.ones((4, 4)), RNG.random((4, 4))) == 0.0
        assert M.auc_judd(np.ones((4, 4)), fix) == 0.5


def test_accepts_torch_tensors():
    x = torch.rand(5, 5)
    assert M.cc(x, x) == pytest.approx(1.0)


# --------------------------------------------------------------------------- saliency: hand cases


def test_cc_hand_example():
    # deviations a = [-1, 0, 1], b = [-5/3, -2/3, 7/3]: sum ab = 4, sum a^2 = 2, sum b^2 = 78/9
    expected = 4 / math.sqrt(2 * 78 / 9)
    assert M.cc([[1.0, 2.0, 3.0]], [[1.0, 2.0, 5.0]]) == pytest.approx(expected)


def test_kld_and_sim_hand_example():
    pred, gt = [[1.0, 1.0]], [[1.0, 3.0]]  # -> [1/2, 1/2] and [1/4, 3/4]
    expected_kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert M.kld(pred, gt) == pytest.approx(expected_kl, rel=1e-9)
    assert M.sim(pred, gt) == pytest.approx(0.25 + 0.5)


def test_nss_hand_example():
    # mean 1, std (ddof=1) sqrt(12 / 3) = 2 -> standardised [-0.5, -0.5, -0.5, 1.5]
    pred = [[0.0, 0.0], [0.0, 4.0]]
    assert M.nss(pred, [[0, 0], [0, 1]]) == pytest.approx(1.5)
    assert M.nss(pred, [[1, 0], [0, 3]]) == pytest.approx(0.5)  # counts act as binary


def test_auc_judd_hand_example():
    # Fixated values 4 and 2 (thresholds), negatives 3 and 1. Threshold 4: tp 1/2, fp 0;
    # threshold 2: tp 1, fp (3 - 2) / 2. Trapezoid over (0,0) (0,.5) (.5,1) (1,1) = 0.875.
    pred = [[4.0, 3.0], [2.0, 1.0]]
    assert M.auc_judd(pred, [[1, 0], [1, 0]], jitter=False) == pytest.approx(0.875)
    assert M.auc_judd(pred, [[1, 0], [1, 0]]) == pytest.approx(0.875)  # jitter breaks no order


def test_auc_judd_random_map_is_chance_and_peaked_map_is_near_one():
    fix = np.zeros((100, 100))
    fix.flat[RNG.choice(fix.size, 2000, replace=False)] = 1
    assert M.auc_judd(RNG.random((100, 100)), fix) == pytest.approx(0.5, abs=0.05)
    peaked = fix * 1e-6 + 1e-9 * RNG.random((100, 100))  # tiny units, as a softmax output
    assert M.auc_judd(peaked, fix) > 0.99


@pytest.mark.parametrize(
    "call",
    [
        lambda: M.cc(np.ones((2, 2)), np.ones((2, 3))),
        lambda: M.cc([[np.nan, 1.0]], [[1.0, 2.0]]),
        lambda: M.kld([[-1.0, 2.0]], [[1.0, 1.0]]),
        lambda: M.sim([[0.0, 0.0]], [[1.0, 1.0]]),
        lambda: M.nss(np.ones((2, 2)), np.zeros((2, 2))),
        lambda: M.auc_judd(np.eye(2), np.ones((2, 2))),
    ],
)
def test_saliency_metrics_reject_bad_input(call):
    with pytest.raises(ValueError):
        call()


def test_fixation_map_from_points_rounds_and_drops():
    points = [(0.4, 0.6), (2, 1), (-1, 0), (3, 0), (2.6, 0.0), (np.nan, 1), (-0.4, 0)]
    got = M.fixation_map_from_points(np.array(points), (2, 3))
    expected = np.array([[1, 0, 0], [1, 0, 1]], dtype=np.uint8)  # (2.6, 0) is dropped, not clipped
    np.testing.assert_array_equal(got, expected)
    assert M.fixation_map_from_points(np.zeros((0, 2)), (2, 2)).sum() == 0


def test_centre_bias_map():
    m = M.centre_bias_map((9, 7))
    assert m.sum() == pytest.approx(1.0)
    assert np.unravel_index(m.argmax(), m.shape) == (4, 3)
    np.testing.assert_allclose(m, m[::-1, ::-1])


def test_saliency_scores_per_image_over_a_batch():
    preds, gts = RNG.random((3, 1, 6, 5)), RNG.random((3, 1, 6, 5))
    fix = [(RNG.random((6, 5)) > 0.7).astype(int) for _ in range(2)] + [None]
    one = M.saliency_scores(preds[0, 0], gts[0, 0], fix[0])
    assert set(one) == {"cc", "kld", "sim", "nss", "auc_judd"}
    df = M.batch_saliency_scores(preds, gts, fix)
    assert df.shape == (3, 5) and np.isnan(df.loc[2, "nss"])
    assert df.loc[0].to_dict() == pytest.approx(one)
    assert list(M.batch_saliency_scores(preds, gts).columns) == ["cc", "kld", "sim"]


# --------------------------------------------------------------------------- classification


def test_classification_perfect():
    y = np.array([0, 1, 2, 2, 1, 0])
    out = M.classification_scores(np.eye(3)[y], y)
    assert out["auc_macro"] == out["auc_micro"] == out["accuracy"] == out["f1_macro"] == 1.0
    assert out["auc_per_class"] == {"Normal": 1.0, "CHF": 1.0, "Pneumonia": 1.0}
    assert out["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]


def test_classification_hand_case_against_sklearn():
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]
    )
    y = np.array([0, 1, 2, 1, 0])  # argmax: 0, 1, 2, 0 (tie -> first), 2
    out = M.classification_scores(torch.tensor(probs), torch.tensor(y))
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    # F1: Normal 2*1/(2+1+1) = .5, CHF 2*1/(2+0+1) = 2/3, Pneumonia 2*1/(2+1+0) = 2/3
    assert list(out["f1_per_class"].values()) == pytest.approx([0.5, 2 / 3, 2 / 3])
    assert out["auc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert out["auc_micro"] == pytest.approx(roc_auc_score(np.eye(3)[y], probs, average="micro"))
    # Normal vs rest by hand: positives .6, .3; negatives .2, .1, .4 -> 5 of 6 pairs ordered
    assert out["auc_per_class"]["Normal"] == pytest.approx(5 / 6)


def test_classification_absent_class_is_nan_without_warnings():
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.4, 0.5, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = M.classification_scores(probs, y)
    assert math.isnan(out["auc_per_class"]["Pneumonia"])
    assert math.isnan(out["f1_per_class"]["Pneumonia"])
    assert out["auc_macro"] == 1.0 and out["f1_macro"] == 1.0
    assert set(M.roc_curves(probs, y)) == {0, 1}


@pytest.mark.parametrize(
    "probs, labels",
    [(np.ones((3, 3)) / 3, [0, 1, 3]), (np.ones((3, 3)) / 3, [0, 1]), (np.ones(3), [0, 1, 2])],
)
def test_classification_rejects_bad_input(probs, labels):
    with pytest.raises(ValueError):
        M.classification_scores(probs, np.array(labels))


def test_roc_curves_end_points():
    y = np.array([0, 1, 2, 0, 1, 2])
    curves = M.roc_curves(RNG.dirichlet(np.ones(3), 6), y)
    assert set(curves) == {0, 1, 2}
    fpr, tpr = curves[1]
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


# --------------------------------------------------------------------------- statistics


def test_bootstrap_ci_contains_point_and_narrows():
    small, big = RNG.normal(size=30), RNG.normal(size=3000)
    p_small, lo_small, hi_small = M.bootstrap_ci(np.mean, small, n_boot=300)
    p_big, lo_big, hi_big = M.bootstrap_ci(np.mean, big, n_boot=300)
    assert lo_small <= p_small <= hi_small and lo_big <= p_big <= hi_big
    assert p_small == pytest.approx(small.mean())
    assert hi_big - lo_big < (hi_small - lo_small) / 3
    assert M.bootstrap_ci(np.mean, small, n_boot=300) == (p_small, lo_small, hi_small)  # seeded


def test_bootstrap_ci_paired_arrays_and_failures():
    y = np.array([0, 1] * 20)
    scores = y + RNG.normal(scale=0.8, size=40)
    point, lo, hi = M.bootstrap_ci(roc_auc_score, y, scores, n_boot=200)
    assert lo <= point <= hi <= 1.0
    # one positive: about 37% of resamples have none (ValueError) and are skipped
    rare = np.array([1] + [0] * 39)
    point, lo, hi = M.bootstrap_ci(roc_auc_score, rare, scores, n_boot=100)
    assert lo <= point <= hi

    def distinct_mean(x):  # undefined for almost every resample
        if len(np.unique(x)) < len(x):
            raise ValueError("repeated rows")
        return x.mean()

    with pytest.raises(RuntimeError):
        M.bootstrap_ci(distinct_mean, scores, n_boot=100)
    with pytest.raises(ValueError):
        M.bootstrap_ci(roc_auc_score, y, scores[:-1])


def test_paired_ttest_matches_scipy():
    a = RNG.normal(size=20)
    b = a + RNG.normal(0.3, 0.5, size=20)
    out = M.paired_ttest(a, b)
    ref = stats.ttest_rel(a, b)
    assert out["t"] == pytest.approx(ref.statistic) and out["p"] == pytest.approx(ref.pvalue)
    assert out["mean_diff"] == pytest.approx((a - b).mean()) and out["n"] == 20
    with pytest.raises(ValueError):
        M.paired_ttest(a, b[:-1])


def test_knn_probe_uses_the_requested_geometry():
    from cxrlib.metrics import knn_accuracy

    # two classes along the same direction: only the L2 distance tells them apart
    train = np.array([[1.0, 1.0], [1.1, 1.1], [10.0, 10.0], [11.0, 11.0]])
    test = np.array([[1.05, 1.05], [10.5, 10.5]])
    assert knn_accuracy(train, [0, 0, 1, 1], test, [0, 1], k=1, metric="euclidean") == 1.0
    assert knn_accuracy(train, [0, 0, 1, 1], test, [0, 1], k=1, metric="cosine") < 1.0
