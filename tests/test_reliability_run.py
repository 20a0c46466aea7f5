"""Issue 16, part 2: training faults. Resume provenance, empty loops, orphan temporary files,
a busy stage folder, and a seeded stage that repeats bit for bit in fresh processes."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from cxrlib import runfolder
from cxrlib.training import stages
from cxrlib.training.checkpoints import BEST, LAST, load_checkpoint
from cxrlib.config import load_config, make_config
from cxrlib.synthetic.egd import make_egd_like
from cxrlib.training.trainer import Trainer

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)

    def parts(self):
        return {"head": self.head}


def step(model, batch):
    return {"loss": nn.functional.cross_entropy(model.head(batch["x"]), batch["label"])}


def samples(n):
    g = torch.Generator().manual_seed(n)
    return [{"x": torch.randn(4, generator=g), "label": i % 3} for i in range(n)]


def fit(run_dir, data=(16, 8), stop_after=None, progress=False, **kw):
    kw.setdefault("epochs", 3)
    config = make_config("stage1b", "smoke", run_dir=str(run_dir), init_from="none", **kw)
    torch.manual_seed(0)
    trainer = Trainer(Tiny(), config, train_parts=("head",), loss_fn=step, progress=progress)
    return trainer, trainer.fit(samples(data[0]), samples(data[1]), stop_after=stop_after)


# -- 2. an empty loop is never an epoch ------------------------------------------------------
def test_empty_validation_split_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="stage1b: the val split is empty"):
        fit(tmp_path, data=(16, 0))
    assert not (tmp_path / "stage1b" / BEST).exists()


# -- 7. resume refuses a change of a setting that changes the weights ------------------------
def test_resume_with_other_settings_is_refused_listing_them(tmp_path):
    fit(tmp_path, stop_after=1)
    with pytest.raises(ValueError) as err:
        fit(tmp_path, resume=True, lr=1e-3, batch_size=2)
    text = str(err.value)
    assert "cannot resume from" in text and str(tmp_path / "stage1b" / LAST) in text
    assert "lr: 0.0001 in the checkpoint, 0.001 now" in text and "batch_size" in text and "new run folder" in text
    assert load_config(tmp_path / "stage1b" / "config.json").lr == 1e-4  # still describes the weights
    trainer, history = fit(tmp_path, resume=True, epochs=4)  # more epochs: allowed
    assert history["epoch"].tolist() == [1, 2, 3, 4]


def test_resume_continues_to_the_same_weights_as_one_run(tmp_path):
    whole, _ = fit(tmp_path / "whole")
    fit(tmp_path / "cut", stop_after=2)
    resumed, _ = fit(tmp_path / "cut", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()))


# -- 11. temporary checkpoints of a killed run -----------------------------------------------
def test_orphan_temporary_checkpoints_are_removed_at_the_next_start(tmp_path, capsys):
    stage_dir = tmp_path / "stage1b"
    stage_dir.mkdir()
    orphans = [stage_dir / ".last.pt.4242.0badf00d.tmp", stage_dir / ".best.pt.4243.deadbeef.tmp"]
    for path in orphans:
        path.write_bytes(b"\0" * 5000)
    trainer, history = fit(tmp_path)
    assert not any(p.exists() for p in orphans) and len(history) == 3
    assert "removed 2 temporary file(s)" in capsys.readouterr().out
    assert load_checkpoint(stage_dir / BEST)["epoch"] >= 0  # the run completed and its checkpoint verifies


# -- 1. one writer per stage folder ----------------------------------------------------------
def test_a_second_trainer_of_the_same_stage_is_refused(tmp_path):
    code = textwrap.dedent(f"""
        import time
        from cxrlib import runfolder
        runfolder.acquire({str(tmp_path / 'stage1b' / '.lock')!r}, what="test")
        print("held", flush=True)
        time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runfolder.RunFolderBusy, match=rf"stage folder .*stage1b is in use by pid {holder.pid}"):
            fit(tmp_path)
        assert not (tmp_path / "stage1b" / "config.json").exists()  # nothing of the holder's overwritten
    finally:
        holder.kill()  # as a killed kernel would: its lock stays behind
        holder.wait()
    with pytest.warns(UserWarning, match=f"took over the stale lock .*pid {holder.pid}"):
        _, history = fit(tmp_path)  # repaired: the stage trains
    assert len(history) == 3 and not (tmp_path / "stage1b" / ".lock").exists()


# -- 14. a seeded stage repeats bit for bit --------------------------------------------------
def test_progress_bars_do_not_change_the_batch_order(tmp_path):
    quiet, _ = fit(tmp_path / "quiet", epochs=2)
    bars, _ = fit(tmp_path / "bars", epochs=2, progress=True)
    assert all(torch.equal(a, b) for a, b in zip(quiet.model.state_dict().values(), bars.model.state_dict().values()))


NOTEBOOK_PATH = """
import sys, torch
from cxrlib.training import stages
from cxrlib.config import make_config
torch.seed()  # a fresh kernel's global generator: random, as before any seeding
config = make_config("stage1a", "smoke", run_dir=sys.argv[1], egd_root=sys.argv[2], epochs=2)
bars = sys.argv[3] == "bars"
data = stages.prepare_data(config, progress=False)
model = stages.build_stage_model(config)  # as notebook 02 does, before run_stage
stages.embeddings(model, data.train, config)
stages.run_stage(config, data, model=model, progress=bars)
"""


def test_seeded_stage_repeats_bit_for_bit_in_fresh_processes(tmp_path):
    egd = make_egd_like(tmp_path / "egd", n_images=18, seed=2, progress=False)
    for k, bars in enumerate(("bars", "quiet")):  # a notebook (bars) and cxrlib train --no-progress
        subprocess.run([sys.executable, "-c", NOTEBOOK_PATH, str(tmp_path / f"run{k}"), str(egd), bars], check=True,
                       env={**ENV, "PYTHONHASHSEED": str(k + 1)}, capture_output=True, timeout=600)
    a, b = (load_checkpoint(tmp_path / f"run{k}" / "stage1a" / BEST)["model"] for k in range(2))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"
    history = [load_checkpoint(tmp_path / f"run{k}" / "stage1a" / LAST)["history"] for k in range(2)]
    assert [r["train_loss"] for r in history[0]] == [r["train_loss"] for r in history[1]]
    assert stages.checkpoint_path(make_config("stage1a", "smoke", run_dir=str(tmp_path / "run0"))).is_file()
