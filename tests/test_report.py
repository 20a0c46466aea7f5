"""What the notebooks print after training: read from the history, never typed in."""

import pandas as pd

from cxrlib.evaluation import report
from cxrlib.training.history import epoch_line


def history(train, val, cc):
    return pd.DataFrame({"epoch": range(1, len(train) + 1), "train_loss": train, "val_loss": val,
                         "val_cc": cc, "seconds": [1.5] * len(train), "improved": [True] * len(train)})


def test_summary_reads_the_numbers_of_the_history():
    text = report.history_summary(history([1.2, 0.9, 0.6], [1.1, 0.8, 0.85], [0.1, 0.3, 0.25]))
    assert "train loss fell from 1.2000 (epoch 1) to 0.6000 (epoch 3) (50%)" in text
    assert "best validation loss 0.8000 at epoch 2" in text
    assert "cc on validation: 0.100 after epoch 1, 0.250 after epoch 3, best 0.300 (epoch 2)" in text
    assert "4.5 s" in text


def test_summary_of_one_epoch_and_of_none():
    assert "after the only epoch" in report.history_summary(history([1.0], [1.1], [0.2]))
    assert "empty" in report.history_summary(pd.DataFrame())


def test_epoch_line_is_one_plain_line():
    row = history([0.51234], [0.6], [0.4]).to_dict("records")[0]
    line = epoch_line(row, "stage2", 10)
    assert "\n" not in line
    assert line.startswith("stage2 epoch 1/10: train loss 0.5123  val loss 0.6000") and "cc 0.400" in line
    assert line.endswith("1.5 s  *best")


def test_summary_of_a_finetuned_stage_reads_each_phase_apart():
    """Stage 3 with mode="finetune": the phases' losses are on different scales, so each is
    summarised alone, and only the last phase's best epoch is called the checkpoint."""
    head = history([1.2, 0.5, 0.4], [1.0, 0.45, 0.44], [0.6, 0.6, 0.6]).assign(phase="head")
    tuned = history([2.0, 1.8], [2.1, 1.9], [0.58, 0.59]).assign(phase="finetune")
    text = report.history_summary(pd.concat([head, tuned], ignore_index=True))
    head_part, tuned_part = text.split("finetune phase:")
    assert head_part.startswith("head phase:")
    assert "best validation loss 0.4400 at epoch 3: the finetune phase starts from that epoch's weights" in head_part
    assert "best validation loss 1.9000 at epoch 2: that epoch's weights are the checkpoint" in tuned_part
    assert "checkpoint" not in head_part
