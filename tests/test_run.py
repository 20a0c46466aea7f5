"""``cxrlib run``'s parameter check: a wrong parameter fails before any notebook runs."""

import pytest

from cxrlib.run import NOTEBOOK_STAGES, PipelineError, check_parameters, parse_value


def test_valid_parameters_pass():
    check_parameters({"profile": "smoke", "epochs": 2, "lr": 1e-3, "loss": "supcon", "seeds": (0, 1)})


def test_unknown_parameter_is_named_with_the_valid_ones():
    with pytest.raises(PipelineError, match=r"unknown parameter\(s\) \['epoch'\]; valid parameters: .*epochs"):
        check_parameters({"profile": "smoke", "epoch": 2})


@pytest.mark.parametrize("params, error, match", [
    ({"epochs": "two"}, TypeError, "parameter 'epochs' must be int"),
    ({"loss": "infonce"}, ValueError, "'loss' must be one of"),
    ({"variants": ("full", "nope")}, ValueError, "unknown variant 'nope'"),
    ({"profile": "laptop"}, ValueError, "unknown profile"),
])
def test_wrong_values_fail_in_the_stage_that_reads_them(params, error, match):
    with pytest.raises(error, match=match):
        check_parameters(params)


def test_cli_values_parse_as_literals():
    assert parse_value("3") == 3 and parse_value("(64, 64)") == (64, 64) and parse_value("None") is None
    assert parse_value("supcon") == "supcon"


def test_every_stage_notebook_is_in_the_registry():
    assert list(NOTEBOOK_STAGES)[:2] == ["01_data_exploration.ipynb", "02_contrastive_pretraining.ipynb"]
    assert NOTEBOOK_STAGES["05_stage3_fusion.ipynb"] == "stage3"


def test_cli_trains_every_registered_stage():
    from cxrlib.cli import build_parser
    from cxrlib.training.stages import TRAINABLE_STAGES

    assert {"stage1a", "stage1b", "stage2", "stage3", "joint"} == set(TRAINABLE_STAGES)
    for stage in TRAINABLE_STAGES:
        assert build_parser().parse_args(["train", "--stage", stage]).stage == stage
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--stage", "explain"])  # trains nothing


def test_summary_names_the_split_it_scored():
    """A run scored on validation (the code's protocol) must not print "test split"."""
    from cxrlib.run import summary_table

    metrics = {"eval_split": "val", "classification": {"auc_macro": 0.8, "auc_macro_ci": [0.7, 0.9]}}
    text = summary_table(metrics, [("05_stage3_fusion.ipynb", 1.0)], "/tmp/x")
    assert "validation split (metrics.json)" in text and "test split" not in text and "optimistic" in text
    assert "test split (metrics.json)" in summary_table({**metrics, "eval_split": "test"}, [], "/tmp/x")
