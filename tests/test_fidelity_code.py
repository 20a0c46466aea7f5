"""The authors' code as it ran: the by-image split, the loop switches, the ``fidelity`` preset
and its table in docs/reproduction-notes.md, and stage 3's joint mode."""

import ast
import re

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlib.config import ParameterError, make_config, parameter_names
from cxrlib.config.fidelity import CODE_PRESET, DERIVED, FIDELITY, PROTOCOL_FIELDS
from cxrlib.data.splits import load_or_make_splits, make_splits
from cxrlib.paths import repository_root
from cxrlib.training.checkpoints import BEST, LAST, load_checkpoint
from cxrlib.training.precision import Autocast
from cxrlib.training.trainer import Trainer


# -- the code's split by image ---------------------------------------------------------------
def _sheet(n_per_class=30, seed=0):
    rng = np.random.default_rng(seed)
    n = 3 * n_per_class
    return pd.DataFrame({"dicom_id": [f"id{i}" for i in range(n)], "patient_id": np.arange(n) // 2,
                         "label": rng.permutation(np.arange(n) % 3)})


def test_image_split_walks_the_random_split_order_with_a_per_class_counter():
    sheet = _sheet()
    splits = make_splits(sheet, seed=0, rule="image")
    # the order the code walks: torch's random_split of range(N), fraction 1, generator seeded 0
    order, _ = torch.utils.data.random_split(range(len(sheet)), [len(sheet), 0],
                                             generator=torch.Generator().manual_seed(0))
    for label in range(3):
        walked = [splits["split"].iloc[i] for i in order if sheet["label"].iloc[i] == label]
        # k = 1..30: k % 10 in {0, 1} -> test (k = 1, 10, 11, 20, 21, 30), k % 10 == 2 -> val
        assert [k for k, s in enumerate(walked, 1) if s == "test"] == [1, 10, 11, 20, 21, 30]
        assert [k for k, s in enumerate(walked, 1) if s == "val"] == [2, 12, 22]
        assert walked.count("train") == 21
    assert not splits.equals(make_splits(sheet, seed=1, rule="image"))
    # images, not patients: with two images per patient some patients straddle two splits
    assert splits.groupby("patient_id")["split"].nunique().max() == 2


def test_split_rules_are_checked_against_the_file(tmp_path):
    sheet = _sheet()
    path = tmp_path / "splits.csv"
    written = load_or_make_splits(path, sheet, seed=0, rule="image")
    assert load_or_make_splits(path, sheet, seed=0, rule="image")["split"].tolist() == written["split"].tolist()
    with pytest.raises(ValueError, match=r"split='patient'.*another data_seed or split rule"):
        load_or_make_splits(path, sheet, seed=0, rule="patient")  # the default rule never reads it silently
    with pytest.raises(ValueError, match="parameter 'split'"):
        make_splits(sheet, rule="by_image")
    with pytest.raises(ParameterError, match="parameter 'split' must be one of"):
        make_config("stage2", "smoke", split="by_image")


def test_the_run_folder_split_follows_the_config(tmp_path):
    from cxrlib.training import stages

    data = stages.prepare_data(make_config("stage2", "smoke", run_dir=str(tmp_path), synthetic_images=30,
                                           split="image"), progress=False)
    assert data.splits.groupby("label")["split"].apply(lambda s: (s == "test").sum()).min() >= 1
    assert pd.read_csv(tmp_path / "splits.csv")["split"].tolist() == data.splits["split"].tolist()


# -- the loop switches, on a one-weight model ---------------------------------------------------
class _Weight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.constant_(self.w.weight, 1.0)

    def parts(self):
        return {"w": self.w}


def _signed_loss(model, batch, extra=None):
    """Training (x = +1) pushes w down; validation (x = -1) then gets worse every epoch."""
    return {"loss": model.w(batch["x"][:, None]).mean(), "logits": torch.stack([model.w(batch["x"][:, None])[:, 0]] * 3, 1)}


def _samples(sign, n=4):
    return [{"x": torch.tensor(float(sign)), "label": torch.tensor(i % 3), "i": torch.tensor(i)} for i in range(n)]


def _fit(tmp_path, **kw):
    cfg = make_config("stage1b", "smoke", run_dir=str(tmp_path), max_steps_per_epoch=10, batch_size=2,
                      eval_batch_size=2, lr=0.1, plateau_patience=0, **kw)
    trainer = Trainer(_Weight(), cfg, train_parts=("w",), loss_fn=_signed_loss, progress=False)
    return trainer, trainer.fit(_samples(+1), _samples(-1))


@pytest.mark.parametrize("reload", [False, True])
def test_reload_best_on_drop(tmp_path, reload):
    trainer, history = _fit(tmp_path, epochs=2, reload_best_on_drop=reload)
    assert list(history["improved"]) == [True, False] and history["lr"].iloc[1] < history["lr"].iloc[0]
    best = load_checkpoint(tmp_path / "stage1b" / BEST)["model"]["w.weight"]
    last = load_checkpoint(tmp_path / "stage1b" / LAST)["model"]["w.weight"]
    assert torch.equal(best, last) is reload  # last.pt holds the reloaded weights, or the worse ones
    assert (tmp_path / "stage1b" / "best_optimizer.pt").is_file() is reload
    if reload:  # the best epoch's Adam moments, at the reduced learning rate
        kept = load_checkpoint(tmp_path / "stage1b" / "best_optimizer.pt")["optimizer"]
        now = load_checkpoint(tmp_path / "stage1b" / LAST)["optimizer"]
        assert all(torch.equal(kept["state"][0][k], now["state"][0][k]) for k in ("exp_avg", "exp_avg_sq"))
        assert now["param_groups"][0]["lr"] == pytest.approx(history["lr"].iloc[1])
    assert bool(history.get("reloaded_best", pd.Series([False])).fillna(False).any()) is reload


@pytest.mark.parametrize("eps, drops", [(1e-8, False), (0.0, True)])
def test_plateau_eps(tmp_path, eps, drops):
    # lr 1.05e-8 -> 1.05e-9 is a change of 9.45e-9: below torch's eps 1e-8 it is not applied
    cfg = make_config("stage1b", "smoke", run_dir=str(tmp_path), plateau_eps=eps, lr=1.05e-8, plateau_patience=0)
    trainer = Trainer(_Weight(), cfg, train_parts=("w",), loss_fn=_signed_loss, progress=False)
    assert trainer.scheduler.eps == eps
    trainer.scheduler.step(1.0)
    trainer.scheduler.step(2.0)
    assert (trainer.optimizer.param_groups[0]["lr"] < 1.05e-8) is drops


@pytest.mark.parametrize("floor, ran, end", [(0.0, 6, "epochs"), (1e-3, 4, "lr_floor")])
def test_lr_floor_stops_the_loop(tmp_path, floor, ran, end):
    from cxrlib.training.equal_stages import stage_complete

    _, history = _fit(tmp_path, epochs=6, lr_floor=floor)  # lr 0.1, 0.01, 0.001, 0.0001 < 1e-3: stop
    assert len(history) == ran and history["end"].iloc[-1] == end
    assert stage_complete(tmp_path / "stage1b")


def test_val_shuffle_orders_validation_anew_each_epoch(tmp_path):
    seen = []

    def recording_loss(model, batch, extra=None):
        if not model.training:
            seen.append(batch["i"].tolist())
        return _signed_loss(model, batch)

    for shuffle in (False, True):
        seen.clear()
        cfg = make_config("stage1b", "smoke", run_dir=str(tmp_path / str(shuffle)), epochs=3, val_shuffle=shuffle,
                          max_steps_per_epoch=10, eval_batch_size=4)
        samples = _samples(-1, n=12)
        Trainer(_Weight(), cfg, train_parts=("w",), loss_fn=recording_loss, progress=False).fit(_samples(+1), samples)
        epochs = [sum(seen[i:i + 3], []) for i in range(0, 9, 3)]
        assert all(sorted(e) == list(range(12)) for e in epochs)  # every sample once per epoch
        if shuffle:
            assert len({tuple(e) for e in epochs}) == 3 and epochs[0] != list(range(12))
        else:
            assert all(e == list(range(12)) for e in epochs)


@pytest.mark.parametrize("fp32, dtype", [(False, torch.bfloat16), (True, torch.float32)])
def test_eval_fp32_turns_autocast_off_in_validation(tmp_path, fp32, dtype):
    seen = []

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 3)

        def parts(self):
            return {"w": self.w}

    def loss(model, batch, extra=None):
        logits = model.w(batch["x"])
        seen.append(logits.dtype)
        return {"loss": logits.float().logsumexp(1).mean(), "logits": logits}

    cfg = make_config("stage1b", "smoke", run_dir=str(tmp_path), eval_fp32=fp32)
    trainer = Trainer(Linear(), cfg, train_parts=("w",), loss_fn=loss, progress=False)
    trainer.autocast = Autocast(True, torch.bfloat16, False)  # CPU autocast in bf16 stands in for CUDA's
    trainer.evaluate([{"x": torch.randn(4), "label": torch.tensor(i % 3)} for i in range(6)])
    assert seen and all(d == dtype for d in seen)


# -- the preset and its table --------------------------------------------------------------------
def _notes_table() -> dict:
    """The rows of "The fidelity preset" table in docs/reproduction-notes.md: (stage, field) -> value."""
    text = (repository_root() / "docs" / "reproduction-notes.md").read_text()
    block = text.split("<!-- fidelity-preset:start -->")[1].split("<!-- fidelity-preset:end -->")[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`") or set(cells[0]) <= {"-"}:
            continue
        field, stage, value, source = cells[:4]
        assert source, f"row {field} has no source"
        rows[(stage.strip("`"), field.strip("`"))] = value.strip("`")
    return rows


def test_the_notes_table_is_the_preset_field_by_field():
    table = _notes_table()
    expected = {(stage, field): value for stage, values in CODE_PRESET.items() for field, value in values.items()}
    assert set(table) == set(expected) | {("common", f) for f in DERIVED}, "table rows and preset entries differ"
    for key, value in expected.items():
        assert ast.literal_eval(table[key]) == value, key
    for field, rule in DERIVED.items():
        assert table[("common", field)] == rule


@pytest.mark.parametrize("profile", ["smoke", "demo", "paper"])
def test_fidelity_code_sets_every_preset_field_in_every_profile(profile):
    for stage in ("data", "stage1a", "stage1b", "stage2", "stage3", "explain", "joint", "results", "external"):
        config = make_config(stage, profile, fidelity="code")
        names = set(parameter_names(stage))
        for field, value in {**CODE_PRESET["common"], **CODE_PRESET.get(stage, {})}.items():
            if field in names:
                assert getattr(config, field) == value, (stage, field)
        if "early_stopping" in names:
            assert config.early_stopping == 2 * config.plateau_patience + 3
    assert make_config("stage2", "paper", fidelity="code").early_stopping == 83  # KL/RUN.py: 40 * 2 + 3


def test_fidelity_defaults_explicit_parameters_and_code_training():
    default, code = make_config("stage3", "demo"), make_config("stage3", "demo", fidelity="code")
    assert default.fidelity == "method" and default.split == "patient" and default.mode == "head"
    assert not default.reload_best_on_drop and default.plateau_eps == 1e-8 and default.lr_floor == 0
    assert not default.val_shuffle and not default.eval_fp32
    assert code.mode == "joint" and code.init_from == "none" and code.frozen_bn == "train"
    # an explicit parameter wins over the preset
    assert make_config("stage3", "demo", fidelity="code", split="patient", early_stopping=0).split == "patient"
    assert make_config("stage3", "demo", fidelity="code", early_stopping=0).early_stopping == 0
    training = make_config("stage3", "demo", fidelity="code_training")
    assert all(getattr(training, f) == getattr(default, f) for f in PROTOCOL_FIELDS)
    assert training.mode == "joint" and training.resize == "stride"
    with pytest.raises(ParameterError, match=f"parameter 'fidelity' must be one of {re.escape(str(FIDELITY))}"):
        make_config("stage2", "smoke", fidelity="paper")


# -- stage 3 as Module/RUN.py ran it --------------------------------------------------------------
def test_stage3_joint_mode_trains_every_part_from_scratch(tmp_path):
    from cxrlib.training import stages

    cfg = make_config("stage3", "smoke", run_dir=str(tmp_path), synthetic_images=24, mode="joint", init_from="none",
                      densenet_arch="densenet121")
    assert stages.feature_reuse(cfg) is None
    data = stages.prepare_data(cfg, progress=False)
    model = stages.build_stage_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = stages.run_stage(cfg, data, model=model, progress=False)
    assert set(result.trainer.train_parts) == set(model.parts())
    assert "uncertainty" in result.trainer.extra
    after = result.model.state_dict()
    for part in model.parts():
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part + ".")), part


# -- the two ablation rows ------------------------------------------------------------------------
def test_fidelity_table_puts_code_beside_method_with_the_paired_difference():
    from cxrlib.config.variants import VARIANTS
    from cxrlib.evaluation import results

    assert VARIANTS["code"].chain == (("stage3", {"fidelity": "code_training"}),)
    rng = np.random.default_rng(0)
    per_seed, per_image = [], []
    for variant, shift in (("full", 0.0), ("code", -0.1)):
        for seed in (0, 1):
            for i in range(40):
                row = {"variant": variant, "seed": seed, "dicom_id": f"d{i}", "label": i % 3}
                probs = rng.dirichlet([1, 1, 1])
                probs[i % 3] += 1.0 + 10 * shift
                for c, name in enumerate(results.CLASS_NAMES):
                    row[f"prob_{name}"] = probs[c] / probs.sum()
                row.update({k: 0.5 + shift + rng.normal(0, 0.05) for k in results.SALIENCY_KEYS})
                per_image.append(row)
            per_seed += [{"variant": variant, "label": VARIANTS[variant].label, "seed": seed, "metric": k,
                          "value": 0.5 + shift + 0.01 * seed} for k in results.METRICS]
    per_seed, per_image = pd.DataFrame(per_seed), pd.DataFrame(per_image)
    summary = results.compare_variants(per_seed, per_image, n_boot=200)
    table = results.fidelity_table(per_seed, per_image, n_boot=200).set_index("metric")
    assert {"auc_macro", "auc_CHF", "cc", "kld (lower is better)"} <= set(table.index)
    cc = summary[(summary["variant"] == "code") & (summary["metric"] == "cc")].iloc[0]
    assert table.loc["cc", "code - method [95 % CI]"].startswith(f"{cc['diff']:+.3f} [{cc['diff_low']:+.3f}")
    assert cc["diff_high"] < 0 and table.loc["cc", "p"] < 0.05  # a true shift of -0.1 over 40 images
    assert (table["seeds"] == 2).all() and (table["images"] == 40).all()
    only_full = per_seed["variant"] == "full"
    assert results.fidelity_table(per_seed[only_full], per_image[per_image["variant"] == "full"], n_boot=50).empty


def test_split_summary_names_the_rule():
    from cxrlib.data.splits import split_summary

    sheet = _sheet()
    assert split_summary(make_splits(sheet, seed=0), "patient").endswith("no patient is in two splits")
    by_image = make_splits(sheet, seed=0, rule="image")
    straddling = int((by_image.groupby("patient_id")["split"].nunique() > 1).sum())
    assert straddling > 0 and f"{straddling} patient(s) have images in two splits" in split_summary(by_image, "image")
    with pytest.raises(AssertionError, match="patients in more than one split"):
        split_summary(by_image, "patient")


def test_the_code_variant_keeps_the_runs_protocol_and_ablate_passes_the_preset(tmp_path):
    from cxrlib.evaluation import ablation

    (code,) = ablation.variant_configs("code", "smoke", run_root=str(tmp_path))
    assert (code.stage, code.mode, code.init_from, code.fidelity) == ("stage3", "joint", "none", "code_training")
    assert (code.split, code.eval_split, code.kld_eps) == ("patient", "test", make_config("stage3", "smoke").kld_eps)
    assert code.reload_best_on_drop and code.resize == "stride" and not code.shuffle
    # `cxrlib ablate -p fidelity code`: every variant under the code's own protocol
    params = ablation.stage_params(make_config("results", "smoke", run_dir=str(tmp_path), fidelity="code"))
    assert params["fidelity"] == "code" and params["split"] == "image"
    full = ablation.variant_configs("full", "smoke", run_root=str(tmp_path), **params)
    assert all(c.split == "image" and c.eval_split == "val" for c in full)
    assert full[-1].mode == "joint" and full[1].init_from == "none"  # stage 3 and 1b as the code ran them
