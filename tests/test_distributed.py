"""Several processes on CPU (gloo): a smoke stage under torchrun, and the contrastive all-gather.

Both run two processes with one thread each, as torchrun would on a two-GPU machine.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cxrlib import losses
from cxrlib.training import distributed, stages, steps
from cxrlib.config import make_config
from cxrlib.data import collate
from cxrlib.training.checkpoints import BEST, LAST, load_checkpoint
from cxrlib.training.trainer import Trainer

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


STAGE2 = {"synthetic_images": 18, "epochs": 4, "lr": 3e-3, "init_from": "none"}


def test_stage_under_torchrun_trains_and_its_checkpoint_loads_in_one_process(tmp_path):
    params = [a for k, v in STAGE2.items() for a in ("-p", k, str(v))]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
               "--master_port", str(_free_port()), "-m", "cxrlib", "train", "--stage", "stage2",
               "--profile", "smoke", "--no-progress", "-p", "run_dir", str(tmp_path), *params]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("best checkpoint:") == 1  # only rank 0 reports

    history = json.loads((tmp_path / "stage2" / "history.json").read_text())
    assert len(history) == STAGE2["epochs"]
    assert history[-1]["train_loss"] < 0.85 * history[0]["train_loss"]

    # The checkpoint holds the unwrapped model: a strict load in a single process.
    cfg = make_config("stage2", "smoke", run_dir=str(tmp_path), **STAGE2)
    model = stages.load_stage_model(cfg, "stage2")
    assert load_checkpoint(tmp_path / "stage2" / BEST)["config"]["stage"] == "stage2"

    # Validation was sharded and merged: one process on the whole set gets the same metrics.
    data = stages.prepare_data(cfg, progress=False)
    model.load_state_dict(load_checkpoint(tmp_path / "stage2" / LAST)["model"])
    val = steps.with_frozen_densenet(model, data.val, cfg, progress=False)
    trainer = Trainer(model, cfg, train_parts=("res_se", "decoder", "saliency_head"),
                      loss_fn=steps.saliency_step, collate_fn=collate, progress=False)
    single = trainer.evaluate(val)
    for key in ("val_loss", "val_cc", "val_kld", "val_sim"):
        assert single[key] == pytest.approx(history[-1][key], rel=1e-5, abs=1e-6), key

    # A checkpoint written by two processes resumes in one.
    resumed = stages.run_stage(make_config("stage2", "smoke", run_dir=str(tmp_path), resume=True,
                                           **{**STAGE2, "epochs": STAGE2["epochs"] + 1}), data, progress=False)
    assert len(resumed.history) == STAGE2["epochs"] + 1
    assert resumed.history["train_loss"].tolist()[:-1] == pytest.approx([r["train_loss"] for r in history])


# -- the contrastive losses' all-gather ------------------------------------------------------
SIZES = (3, 5)  # uneven local batches: the gather pads and trims
CASES = {
    "triplet": lambda z, y, gather=None: losses.triplet_all(z, y, margin=1.0, gather=gather),
    "supcon": lambda z, y, gather=None: losses.supcon(z, y, temperature=0.5, gather=gather),
    "ntxent": lambda z, y, gather=None: losses.nt_xent(*z.chunk(2), temperature=0.5, gather=gather),
}


def _problem():
    """A tiny linear embedding model, 8 samples (two views each for NT-Xent), 3 classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, sum(SIZES), 6, generator=g)  # (views, B, features)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(0)
    return nn.Linear(6, 4), x, y


def _loss(name, model, x, y, gather=None):
    if name == "ntxent":  # one forward over both views, then the views apart
        return CASES[name](model(x.reshape(-1, x.shape[-1])), y, gather)
    return CASES[name](model(x[0]), y, gather)


def _gather_worker(rank, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.setup()
    try:
        start = sum(SIZES[:rank])
        local = slice(start, start + SIZES[rank])
        results = {}
        for name in CASES:
            model, x, y = _problem()
            ddp = nn.parallel.DistributedDataParallel(model)
            loss = _loss(name, ddp, x[:, local], y[local], distributed.all_gather_batch)
            loss.backward()
            results[name] = {"loss": loss.detach(), "weight": model.weight.grad, "bias": model.bias.grad}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        distributed.cleanup()


def test_gathered_losses_and_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_gather_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name in CASES:
            model, x, y = _problem()
            loss = _loss(name, model, x, y)
            loss.backward()
            torch.testing.assert_close(got[name]["loss"], loss.detach(), msg=f"{name} loss, rank {rank}")
            torch.testing.assert_close(got[name]["weight"], model.weight.grad, msg=f"{name} grad, rank {rank}")
            torch.testing.assert_close(got[name]["bias"], model.bias.grad, msg=f"{name} grad, rank {rank}")


def test_outside_a_process_group_nothing_changes():
    z, y = torch.randn(4, 3), torch.arange(4)
    gathered_z, gathered_y = distributed.all_gather_batch(z, y)
    assert gathered_z is z and gathered_y is y and distributed.all_gather_batch(z) is z
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.sum_across(1, 2) == (1.0, 2.0)
    assert distributed.concat_across({"a": [1]}) == {"a": [1]}
    assert not distributed.setup()  # no torchrun environment: stays single-process
