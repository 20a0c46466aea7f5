"""The network picture: shapes measured from the model, frozen parts greyed per stage."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cxrlib import diagram  # noqa: E402
from cxrlib.model import DualEncoderMTUNet  # noqa: E402


def test_shapes_follow_the_architecture():
    h, w, b = 64, 96, 8
    s = diagram.network_shapes((h, w), base_width=b)
    assert s["input"] == (1, h, w)
    assert s["bottleneck"] == (1920, h // 32, w // 32) and s["pooled"] == (1920,)
    for i in range(1, 6):  # Res-SE level i: b * 2**(i-1) channels at stride 2**(i-1)
        assert s[f"e{i}"] == (b * 2 ** (i - 1), h // 2 ** (i - 1), w // 2 ** (i - 1))
    assert s["d5"] == (8 * b, h // 16, w // 16) and s["d2"] == (b, h // 2, w // 2)
    assert s["d1"] == (b, h, w)
    assert s["saliency"] == (1, h, w) and s["logits"] == (3,)


def test_shapes_of_a_real_model_match_a_real_forward_and_leave_weights_alone():
    torch.manual_seed(0)
    model = DualEncoderMTUNet(base_width=4, densenet_arch="densenet121").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = diagram.network_shapes((64, 64), model=model)
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 64, 64))
    assert s["saliency"] == tuple(out["saliency_log"].shape[1:])
    assert s["logits"] == tuple(out["logits"].shape[1:])
    assert s["bottleneck"] == (1024, 2, 2)  # densenet121's width, not a typed-in 1920
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _faces(fig):
    ax = fig.axes[0]
    return {p.get_gid(): mcolors.to_hex(p.get_facecolor()) for p in ax.patches}


@pytest.mark.parametrize("stage, trained", [
    ("stage1a", {"densenet"}),
    ("stage1b", {"densenet"}),  # its linear head is not the fusion classifier
    ("stage2", {"res_se", "decoder", "saliency_head"}),
    ("stage3", {"classifier"}),
])
def test_frozen_parts_are_grey(stage, trained):
    import matplotlib.pyplot as plt

    fig = diagram.draw_network(stage, (64, 64), base_width=8)
    faces = _faces(fig)
    assert set(faces) == {"input", "densenet", "res_se", "decoder", "saliency_head", "classifier"}
    for part, face in faces.items():
        if part == "input":
            continue
        assert (face == diagram._FROZEN) == (part not in trained), (stage, part, face)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "(8, 64, 64)" in texts and "(1920, 2, 2)" in texts  # e1 and the bottleneck, measured
    plt.close(fig)


def test_unknown_stage_or_part_is_refused():
    with pytest.raises(ValueError, match="unknown stage"):
        diagram.draw_network("stage9", (64, 64))
    with pytest.raises(ValueError, match="unknown part"):
        diagram.draw_network("stage2", (64, 64), trained=["encoder"])
