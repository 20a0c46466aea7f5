"""Evaluation metrics (docs/method.md, section 6), in two modules:

* :mod:`cxrlib.metrics.saliency`: CC, KLD, SIM, NSS and AUC-Judd of one map (the MIT saliency
  benchmark's definitions), per image over a batch, fixation maps and the centre-bias map;
* :mod:`cxrlib.metrics.classification`: AUC (per class, macro, micro), accuracy, F1 and the
  confusion matrix from softmax scores; bootstrap intervals, the paired t-test, k-NN accuracy.

Inputs may be NumPy arrays or torch tensors; outputs are floats, arrays, dicts or DataFrames.
Everything is importable from here (``from cxrlib import metrics; metrics.cc(...)``).
"""

from cxrlib.metrics.classification import (bootstrap_ci, classification_scores, knn_accuracy, paired_ttest,
                                           roc_curves)
from cxrlib.metrics.saliency import (EPS, auc_judd, batch_saliency_scores, cc, centre_bias_map,
                                     fixation_map_from_points, kld, nss, saliency_scores, sim)

__all__ = ["EPS", "cc", "kld", "sim", "nss", "auc_judd", "fixation_map_from_points", "centre_bias_map",
           "saliency_scores", "batch_saliency_scores", "classification_scores", "roc_curves", "bootstrap_ci",
           "paired_ttest", "knn_accuracy"]
