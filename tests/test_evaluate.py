"""The numbers of ``evaluate.evaluate_predictions`` on a case small enough to work out by hand."""

import numpy as np
import pytest

from cxrlib.evaluation.evaluate import evaluate_predictions


def hand_case():
    # Ranked perfectly per class (every one-vs-rest AUC is 1) but image 1 is argmax-wrong (CHF).
    probs = np.array([[0.50, 0.30, 0.20], [0.40, 0.45, 0.15], [0.10, 0.80, 0.10], [0.20, 0.10, 0.70]])
    labels = np.array([0, 0, 1, 2])
    one_hot = np.eye(4).reshape(4, 2, 2)  # (N, 2, 2) maps, all mass on one pixel
    gaze_maps = one_hot.copy()
    predicted_maps = one_hot[[0, 1, 3, 2]]  # images 0, 1 exact; images 2, 3 on another pixel
    return {"probs": probs, "labels": labels, "gaze_map": gaze_maps, "predicted_map": predicted_maps,
            "fixations": [np.array([[i % 2, i // 2]], dtype=float) for i in range(4)],  # (x, y) on the target
            "dicom_id": ["a", "b", "c", "d"]}


def test_classification_numbers():
    c = evaluate_predictions(hand_case(), n_boot=200)["classification"]
    assert c["auc_macro"] == pytest.approx(1.0)
    assert c["accuracy"] == pytest.approx(0.75)
    # F1 per class: Normal 2*1/(2+0+1), CHF 2*1/(2+1+0), Pneumonia 1
    assert c["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert c["accuracy_ci"][0] <= 0.75 <= c["accuracy_ci"][1]


def test_saliency_numbers():
    result = evaluate_predictions(hand_case(), n_boot=200)
    s = result["saliency"]
    # CC of two different one-hot maps of n = 4 pixels is -1 / (n - 1); identical maps give 1
    assert s["cc"] == pytest.approx((1 + 1 - 1 / 3 - 1 / 3) / 4)
    assert s["sim"] == pytest.approx(0.5)  # 1, 1, 0, 0
    assert s["n_images"] == 4 and result["n_test"] == 4
    assert s["nss"] > 0 and set(s) >= {"kld", "nss", "auc_judd"}
    assert s["cc_ci"][0] <= s["cc"] <= s["cc_ci"][1]
    assert result["baseline_centre"]["n_images"] == 4


def test_images_without_fixations_leave_out_the_fixation_metrics():
    case = hand_case()
    case["fixations"] = [np.zeros((0, 2)) for _ in range(4)]  # e.g. a gaze file with no fixations.csv
    result = evaluate_predictions(case, n_boot=50)
    for group in ("saliency", "baseline_centre"):
        assert "cc" in result[group] and "nss" not in result[group] and "auc_judd" not in result[group]
    assert result["saliency"]["cc"] == pytest.approx(evaluate_predictions(hand_case(), n_boot=50)["saliency"]["cc"])
