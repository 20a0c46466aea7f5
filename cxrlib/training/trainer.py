"""The one training loop for every stage (docs/method.md section 4).

A stage is: a model, the names of the parts that train (the rest is frozen), a loss function
``loss_fn(model, batch) -> {"loss": tensor, "logits"?: ..., "saliency_log"?: ...}`` and the
config's hyper-parameters. :class:`Trainer` does the rest:

* frozen parts get no gradients **and** stay in eval mode, so their BatchNorm statistics do not
  move (``frozen_bn="train"`` reproduces the paper code, where they drifted);
* Adam, ReduceLROnPlateau on the validation loss, optional early stopping, and the
  best-validation weights reloaded at the end; the paper code's loop is a few switches away
  (``reload_best_on_drop``, ``plateau_eps``, ``lr_floor``, ``val_shuffle``, ``eval_fp32``);
* mixed precision on CUDA (bf16 where supported, else fp16 with a gradient scaler), full
  precision elsewhere;
* a checkpoint state after every epoch with model, optimiser, scheduler, scaler, epoch, RNG
  states, config and history, so ``resume=True`` continues an interrupted stage to the same
  weights, and refuses to when a setting that changes the weights differs;
* deterministic algorithms where ``config.deterministic`` asks for them (default: on CPU).

Where the states, ``config.json`` and the per-epoch history go is the run-folder writer it is
given (:mod:`cxrlib.training.stage_folder`: the stage's folder by default, with its lock, orphan
clean-up and in-progress marker; in memory for tests): the loop itself writes no file.
* under torchrun (:mod:`cxrlib.training.distributed`): DistributedDataParallel over the whole step, a
  DistributedSampler reshuffled each epoch, validation sharded and merged so every rank sees the
  same metrics, optional SyncBatchNorm, and only rank 0 writing files. Checkpoints hold the
  unwrapped model, so they load in one process or any number of them.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from cxrlib.training import distributed, precision, tensorboard
from cxrlib.progress import progress_bar
from cxrlib.training.batches import EpochShuffle, loader_workers, to_device
from cxrlib.training.checkpoints import LAST, check_resumable, load_weights
from cxrlib.training.stage_folder import StageFolder
from cxrlib.training.history import early_stop, epoch_line
from cxrlib.model import predicted_maps, set_modes, set_trainable
from cxrlib.runtime import config_device, rng_state, seed_everything, set_deterministic, set_rng_state




class _Step(nn.Module):
    """Model, extra modules and step function as one module: DistributedDataParallel then sees
    every trained parameter, and a step that calls parts directly (``model.classifier(...)``)
    still runs inside its forward, where DDP hooks the gradient all-reduce."""

    def __init__(self, model: nn.Module, extra: nn.ModuleDict, loss_fn: Callable):
        super().__init__()
        self.model, self.extra, self.loss_fn = model, extra, loss_fn

    def forward(self, batch: dict) -> dict:
        return self.loss_fn(self.model, batch, **({"extra": self.extra} if len(self.extra) else {}))


class Trainer:
    """Fit one stage. See the module docstring for what it takes care of.

    ``find_unused_parameters``: passed to DistributedDataParallel (only under torchrun); needed
    when a trained parameter does not reach the loss (stage 1a: the contrastive embedding is
    taken before DenseNet's ``norm5``). ``folder``: the run-folder writer (default: a
    :class:`~cxrlib.training.stage_folder.StageFolder` of ``stage_dir``, else ``config.stage_dir``).
    """

    def __init__(self, model: nn.Module, config, *, train_parts, loss_fn: Callable, collate_fn=None,
                 extra_modules: dict | None = None,
                 stage_dir=None, progress: bool = True, find_unused_parameters: bool = False, folder=None):
        self.config = config
        self.device = config_device(config)
        self.model = model.to(self.device)
        self.train_parts = tuple(train_parts)
        self.loss_fn, self.collate_fn = loss_fn, collate_fn
        self.extra = nn.ModuleDict(extra_modules or {}).to(self.device)
        self.stage_dir = Path(stage_dir) if stage_dir is not None else config.stage_dir
        self.folder = folder if folder is not None else StageFolder(self.stage_dir, writes=distributed.is_main())
        self.progress = progress and distributed.is_main()
        params = set_trainable(self.model, self.train_parts) + list(self.extra.parameters())
        if not params:
            raise ValueError(f"nothing to train: parts {self.train_parts} have no parameters")
        # GPU speed and memory (cxrlib.training.precision): fused Adam, autocast dtype per card,
        # channels_last, cuDNN autotuning, activation checkpointing of the UNet levels.
        self.optimizer = precision.adam(params, lr=config.lr, device=self.device)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=0.1, patience=config.plateau_patience, eps=config.plateau_eps)
        self.autocast = precision.autocast_settings(self.device, config.amp, config.amp_dtype)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast.scaler)
        self.channels_last = precision.use_channels_last(self.device, config.channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.extra.to(memory_format=torch.channels_last)
        precision.configure_backends(self.device)
        self.checkpointed = precision.apply_activation_checkpointing(self.model, config, self.autocast)  # or "auto"
        self._step = precision.compile_setting(self.model, self._eager_step, config.compile,  # blocks, or the step
                                               distributed=distributed.is_distributed())
        self.history: list[dict] = []
        self.best_val = math.inf
        self.start_epoch = 0
        self.ddp = self._wrap_ddp(find_unused_parameters) if distributed.is_distributed() else None
        self._loaders: dict = {}  # (data set, shuffle) -> (data set, DataLoader); see _loader
        self.epoch_images, self.epoch_train_seconds = 0, 0.0  # of the last train_epoch, for images/s

    def _wrap_ddp(self, find_unused_parameters: bool) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if self.config.sync_batchnorm:
            if self.device.type == "cuda":  # same Parameter objects: the optimiser is unaffected
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                warnings.warn("sync_batchnorm needs CUDA; keeping per-process BatchNorm", stacklevel=3)
        device_ids = None
        if self.device.type == "cuda":
            device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        return DistributedDataParallel(_Step(self.model, self.extra, self.loss_fn), device_ids=device_ids,
                                       find_unused_parameters=find_unused_parameters)

    # -- data ------------------------------------------------------------------------------
    def _loader(self, data: Dataset, *, shuffle: bool, epoch: int = 0) -> DataLoader:
        """The DataLoader of ``data``, built once and kept, so its worker processes persist
        across epochs; each epoch only sets the sampler's epoch.

        The order of an epoch depends on (seed, epoch) alone, never on what ran before, so a
        resumed run sees the batches an uninterrupted one would, with any number of workers
        (samples are deterministic: augmentation happens in the step, in this process).
        Batches go to pinned memory on CUDA, so ``to_device``'s copies do not block.
        """
        # Subset objects made anew each epoch (sharded validation) share one loader.
        key = (id(data.dataset), data.indices) if isinstance(data, Subset) and isinstance(data.indices, range) \
            else id(data)
        key = (key, shuffle)
        if key not in self._loaders:
            batch = self.config.batch_size if shuffle else self.config.eval_batch_size
            sampler = None
            # config.shuffle / drop_last False: the paper code's Module/ and baseline/ loaders (fidelity notes)
            if shuffle and distributed.is_distributed():  # batch_size is per process under torchrun
                sampler = DistributedSampler(data, shuffle=self.config.shuffle, seed=self.config.seed)
            elif shuffle and self.config.shuffle:
                sampler = EpochShuffle(len(data), self.config.seed)
            n = len(data) if sampler is None else len(sampler)
            workers = loader_workers(self.config, self.device)
            # A private generator: a DataLoader without one draws its workers' base seed from the
            # global RNG, which would shift every later dropout mask.
            loader = DataLoader(data, batch_size=batch, sampler=sampler, collate_fn=self.collate_fn,
                                drop_last=shuffle and n > batch and self.config.drop_last, num_workers=workers,
                                persistent_workers=workers > 0, generator=torch.Generator().manual_seed(self.config.seed),
                                pin_memory=self.device.type == "cuda")
            self._loaders[key] = (data, loader)  # data kept alive: its id stays unique
        loader = self._loaders[key][1]
        if loader.sampler is not None and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        return loader

    # -- checkpoints -----------------------------------------------------------------------
    def _state(self, epoch: int) -> dict:
        return {
            "model": self.model.state_dict(), "extra": self.extra.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": epoch, "rng": rng_state(),
            "config": self.config.to_dict(), "history": self.history, "best_val": self.best_val,
        }

    def _resume(self) -> bool:
        state = self.folder.load_last(self.device)
        if state is None:
            return False
        path = self.folder.describe(LAST)
        try:
            check_resumable(state.get("config") or {}, self.config, path)
        except ValueError:
            self.folder.restore_config(state.get("config"))  # a notebook may have saved the new config already
            raise
        load_weights(self.model, state, path)
        load_weights(self.extra, state, path, key="extra")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.history, self.best_val = list(state["history"]), float(state["best_val"])
        self.start_epoch = int(state["epoch"]) + 1
        return True

    # -- loop ------------------------------------------------------------------------------
    def _eager_step(self, batch: dict) -> dict:
        return self.loss_fn(self.model, batch, **({"extra": self.extra} if len(self.extra) else {}))

    def _forward(self, batch: dict, *, train: bool = False, fp32: bool = False) -> dict:
        with torch.autocast(self.device.type, dtype=self.autocast.dtype, enabled=self.autocast.enabled and not fp32):
            if train and self.ddp is not None:
                return self.ddp(batch)
            return self._step(batch)

    def train_epoch(self, data: Dataset, epoch: int) -> float:
        if distributed.is_distributed():  # own dropout / augmentation draws per rank, the same after a resume
            seed = np.random.SeedSequence([self.config.seed, epoch, distributed.rank()]).generate_state(1)[0]
            seed_everything(int(seed))
        set_modes(self.model, self.train_parts, self.config.frozen_bn)
        self.extra.train()
        loader = self._loader(data, shuffle=True, epoch=epoch)
        n_steps = len(loader) if self.config.max_steps_per_epoch is None else min(len(loader), self.config.max_steps_per_epoch)
        total, count, images, started = 0.0, 0, 0, time.perf_counter()
        bar = progress_bar(loader, total=n_steps, desc=f"{self.config.stage} epoch {epoch + 1}/{self.config.epochs}",
                        enabled=self.progress)
        for step, batch in enumerate(bar):
            if step >= n_steps:
                break
            images += len(batch["label"]) if "label" in batch else 0
            batch = to_device(batch, self.device, channels_last=self.channels_last)
            loss = self._forward(batch, train=True)["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{self.config.stage}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total, count = total + loss.item(), count + 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / count:.4f}")
        # loss.item() above waits for the device, so this is the loop's real pace (data + steps)
        self.epoch_images, self.epoch_train_seconds = images, time.perf_counter() - started
        if distributed.is_distributed():
            distributed.broadcast_buffers(self.ddp)  # rank 0's BatchNorm statistics, as DDP's next forward would
            total, count = distributed.sum_across(total, count)  # the mean over every rank's steps
        if count == 0:  # an empty loop is no epoch: never report it as a loss of 0
            raise RuntimeError(f"{self.config.stage}: epoch {epoch + 1} ran no training step ({len(data)} training "
                               f"samples, batch_size {self.config.batch_size})")
        return total / count

    def _val_loader(self, data: Dataset, epoch: int) -> DataLoader:
        """``val_shuffle``: the validation set in a new order each epoch, as the code's loaders
        (``shuffle=True`` for Valid too) gave it; the order matters where the loss depends on the
        batch (stage 1a's triplets). One process only: sharded validation keeps its order."""
        key = ("val_shuffle", id(data))
        if key not in self._loaders:
            loader = DataLoader(data, batch_size=self.config.eval_batch_size,
                                sampler=EpochShuffle(len(data), self.config.seed + 1), collate_fn=self.collate_fn,
                                num_workers=0, pin_memory=self.device.type == "cuda")
            self._loaders[key] = (data, loader)
        loader = self._loaders[key][1]
        loader.sampler.set_epoch(epoch)
        return loader

    def _stop_reason(self) -> str | None:
        """Why the loop stops before its last epoch: ``early_stop`` (``early_stopping`` epochs
        without improvement) or ``lr_floor`` (the learning rate fell below ``lr_floor``)."""
        if early_stop(self.history, self.config.early_stopping):
            return "early_stop"
        if self.history and self.config.lr_floor > 0 and self.history[-1]["lr"] < self.config.lr_floor:
            return "lr_floor"
        return None

    def _keep_best_optimizer(self, main: bool) -> None:
        """``reload_best_on_drop``: the optimiser state of the best epoch, beside ``best.pt``."""
        if self.config.reload_best_on_drop and main:
            self.folder.save_best_optimizer({"optimizer": self.optimizer.state_dict()})

    def _reload_best_on_drop(self, lr_before: float, epoch: int, main: bool) -> None:
        """``reload_best_on_drop``: at a learning-rate drop, continue from the best epoch's weights
        and optimiser state at the new learning rate (the code's ``train_judgetment`` and
        ``load_net``; its scheduler reload changes nothing: after a drop the counter is 0 and the
        best value is that epoch's)."""
        if not self.config.reload_best_on_drop or self.optimizer.param_groups[0]["lr"] >= lr_before:
            return
        distributed.barrier()  # best.pt complete before any rank reads it
        if self.load_best():
            if (state := self.folder.load_best_optimizer(self.device)) is not None:
                lrs = [group["lr"] for group in self.optimizer.param_groups]
                self.optimizer.load_state_dict(state["optimizer"])
                for group, lr in zip(self.optimizer.param_groups, lrs):
                    group["lr"] = lr
            self.history[-1]["reloaded_best"] = True
            if main:
                print(f"{self.config.stage}: learning rate dropped after epoch {epoch + 1}; best weights reloaded")

    @torch.no_grad()
    def evaluate(self, data: Dataset, *, epoch: int = 0) -> dict:
        """Validation loss plus the metrics the outputs allow, in eval mode.

        When the loss function returns ``logits`` the macro AUC and accuracy are added; when it
        returns ``saliency_log`` and the batch has ``gaze_map``, the mean CC, KLD and SIM, computed
        batched on the model's device in float64 (equal to the NumPy reference functions).
        ``epoch`` orders the batches under ``val_shuffle``; ``eval_fp32`` turns autocast off.
        """
        from cxrlib import metrics
        from cxrlib.metrics.torch_saliency import batch_scores_torch

        self.model.eval()
        self.extra.eval()
        n_steps = self.config.max_steps_per_epoch
        if distributed.is_distributed():  # rank r takes samples r, r + N, ... of those one process would see
            seen = len(data) if n_steps is None else min(len(data), n_steps * self.config.eval_batch_size)
            data = Subset(data, range(distributed.rank(), seen, distributed.world_size()))
        if self.config.val_shuffle and not distributed.is_distributed():
            loader = self._val_loader(data, epoch)
        else:
            loader = self._loader(data, shuffle=False)
        n_steps = len(loader) if n_steps is None else min(len(loader), n_steps)
        total, count, probs, labels, sal = 0.0, 0, [], [], {"cc": [], "kld": [], "sim": []}
        for step, batch in enumerate(loader):
            if step >= n_steps:
                break
            batch = to_device(batch, self.device, channels_last=self.channels_last)
            out = self._forward(batch, fp32=self.config.eval_fp32)
            n = len(batch["label"])
            total, count = total + out["loss"].float().item() * n, count + n
            if "logits" in out:
                probs.append(out["logits"].float().softmax(dim=1).cpu())
                labels.append(batch["label"].cpu())
            if "saliency_log" in out and "gaze_map" in batch:  # the test split's scoring, per image
                # on the model's device, float64 (cxrlib.metrics.torch_saliency): no per-image NumPy loop
                scores = batch_scores_torch(predicted_maps(out), batch["gaze_map"][:, 0])
                for key, values in sal.items():
                    values.append(scores[key])
        sal = {key: torch.cat(values).tolist() if values else [] for key, values in sal.items()}
        if distributed.is_distributed():  # every rank computes the metrics of the whole set
            total, count = distributed.sum_across(total, count)
            merged = distributed.concat_across({"probs": probs, "labels": labels, **sal})
            probs, labels = merged.pop("probs"), merged.pop("labels")
            sal = merged
        if count == 0:  # a validation loss of 0 would count as "improved" and freeze best.pt
            raise RuntimeError(f"{self.config.stage}: validation ran on no sample ({len(data)} validation samples)")
        result = {"val_loss": total / count}
        if probs:
            scores = metrics.classification_scores(torch.cat(probs).numpy(), torch.cat(labels).numpy())
            result.update(val_auc_macro=scores["auc_macro"], val_accuracy=scores["accuracy"])
        if sal["cc"]:
            result.update({f"val_{k}": float(np.mean(v)) for k, v in sal.items()})
        return result

    def fit(self, train_data: Dataset, val_data: Dataset, *, stop_after: int | None = None):
        """Train for ``config.epochs`` (continuing a checkpoint when ``config.resume``).

        ``stop_after`` ends the run after that many epochs of this call, as an interruption
        would (tests use it). Returns the history as a DataFrame.
        """
        for name, data in (("train", train_data), ("val", val_data)):
            if len(data) == 0:  # an empty loop would count as a perfect epoch
                raise ValueError(
                    f"{self.config.stage}: the {name} split is empty; every split needs images (see splits.csv "
                    f"in {self.config.run_dir}): use a larger data set (synthetic_images, egd_root)")
        set_deterministic(self.config.deterministic, self.device)
        main = distributed.is_main()  # the only rank that prints; the others wait at barriers
        with self.folder.session(self.config.stage):  # rank 0 holds the folder; the others write nothing
            return self._fit(train_data, val_data, stop_after, main)

    def _fit(self, train_data: Dataset, val_data: Dataset, stop_after: int | None, main: bool):
        import pandas as pd

        if self.config.resume and self._resume() and main:
            print(f"{self.config.stage}: resumed after epoch {self.start_epoch} from {self.folder.describe(LAST)}")
        self.folder.save_config(self.config)  # after the resume check: config.json describes the weights beside it
        for row in self.history:  # a stage trained further after it ended is no longer ended
            row.pop("end", None)
        for done, epoch in enumerate(range(self.start_epoch, self.config.epochs)):
            if self._stop_reason():  # the rules survive a resume
                break
            if stop_after is not None and done >= stop_after:
                return pd.DataFrame(self.history)
            started = time.perf_counter()
            train_loss = self.train_epoch(train_data, epoch)
            val = self.evaluate(val_data, epoch=epoch)
            lr_before = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step(val["val_loss"])
            improved = val["val_loss"] < self.best_val
            row = {"epoch": epoch + 1, "train_loss": train_loss, **val,
                   "train_images_per_s": self.epoch_images / max(self.epoch_train_seconds, 1e-9),
                   "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started,
                   "improved": bool(improved)}
            self.history.append(row)
            if main:  # one plain line per epoch: readable live, in saved notebooks and in logs
                print(epoch_line(row, self.config.stage, self.config.epochs), flush=True)
                tensorboard.log_epoch(self, row, val_data)  # where TensorBoard is installed
            if improved:
                self.best_val = val["val_loss"]
            if improved and main:
                self.folder.save_best({"model": self.model.state_dict(), "extra": self.extra.state_dict(),
                                       "config": self.config.to_dict(), "epoch": epoch, "metrics": row})
            if improved:
                self._keep_best_optimizer(main)
            self._reload_best_on_drop(lr_before, epoch, main)  # before last.pt: a resume continues from it
            if main:
                self.folder.save_last(self._state(epoch))
                self.folder.write_history(self.history)
            distributed.barrier()  # best.pt / last.pt complete before any rank reads them
            if self._stop_reason():
                if main:
                    print(f"{self.config.stage}: early stop after epoch {epoch + 1} ("
                          + (f"{self.config.early_stopping} epochs without improvement)"
                             if self._stop_reason() == "early_stop" else f"learning rate below {self.config.lr_floor})"))
                break
        self._loaders.clear()  # ends the persistent loader workers of this stage
        if self.history:  # how the stage ended, read by whoever asks whether it is complete
            self.history[-1]["end"] = self._stop_reason() or "epochs"
        self.load_best()
        self.folder.write_history(self.history)
        self.folder.finish(self.config)  # last: the folder now describes a finished run, of these settings
        return pd.DataFrame(self.history)

    def load_best(self) -> bool:
        """The best epoch's weights into the model; False when no best checkpoint exists yet."""
        found = self.folder.load_best(self.device)
        if found is not None:
            state, path = found
            load_weights(self.model, state, path)
            load_weights(self.extra, state, path, key="extra")
        return found is not None
