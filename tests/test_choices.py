"""Each choice parameter's allowed values are declared once (cxrlib.config.choices) and both the
config check and the modules that act on the choice use them."""

import pytest

from cxrlib.config import ParameterError, make_config
from cxrlib.config.choices import FIELD_CHOICES


def test_owners_use_the_declared_values():
    from cxrlib import losses
    from cxrlib.config import choices
    from cxrlib.data import dicom, gaze, geometry
    from cxrlib.model import MODEL_NAMES
    from cxrlib.training import precision

    assert geometry.RESIZE_MODES is choices.RESIZE_MODES and dicom.INTENSITY_MODES is choices.INTENSITY_MODES
    assert gaze.GAZE_SOURCES is choices.GAZE_SOURCES and gaze.WEIGHTINGS is choices.WEIGHTINGS
    assert precision.AMP_DTYPES is choices.AMP_DTYPES and losses.TRIPLET_REDUCTIONS is choices.TRIPLET_REDUCTIONS
    assert tuple(losses.CONTRASTIVE_LOSSES) == choices.CONTRASTIVE_LOSSES and MODEL_NAMES == choices.MODEL_NAMES


@pytest.mark.parametrize("stage, field", [("stage1b", "resize"), ("stage1b", "amp_dtype"), ("stage1a", "loss"),
                                          ("stage3", "mode"), ("joint", "model"), ("stage2", "gaze_source")])
def test_config_refuses_a_value_outside_the_declared_ones(stage, field):
    assert make_config(stage, **{field: FIELD_CHOICES[field][-1]})  # the last declared value is accepted
    with pytest.raises(ParameterError, match=f"parameter '{field}' must be one of"):
        make_config(stage, **{field: "nonsense"})
