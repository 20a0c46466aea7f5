"""The ablation study: every variant runs (smoke, one step per stage), equal stages are linked, and
the statistics of the report on small fake results."""

import json
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cxrlib import CLASS_NAMES, metrics  # noqa: E402
from cxrlib.evaluation import ablation, results
from cxrlib.training import equal_stages, stages
from cxrlib.config import make_config  # noqa: E402
from cxrlib.evaluation.evaluate import write_metrics  # noqa: E402

TINY = {"synthetic_images": 18, "max_steps_per_epoch": 1, "densenet_arch": "densenet121"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on two shared cores: one thread is faster
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("ablation-run")


@pytest.fixture(scope="module")
def ran(root):
    """Every variant once (seed 0), in the registry's order, sharing one data cache."""
    data, out = ablation.DataCache(), {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ablation.VARIANTS:
            out[name] = ablation.run_variant(name, "smoke", seed=0, run_root=root, data=data, progress=False,
                                             log=lambda *a: None, **TINY)
    return out


@pytest.mark.parametrize("name", list(ablation.VARIANTS))
def test_every_variant_runs_and_writes_its_results(ran, root, name):
    m = ran[name]
    folder = ablation.variant_dir(root, name, 0)
    on_disk = json.loads((folder / "metrics.json").read_text())
    assert on_disk["variant"] == name and on_disk["seed"] == 0 and on_disk["profile"] == "smoke"
    assert {"auc_macro", "auc_per_class", "accuracy", "f1_macro", "auc_macro_ci"} <= set(m["classification"])
    assert set(results.SALIENCY_KEYS) <= set(m["saliency"]) and m["n_test"] == m["saliency"]["n_images"]
    assert {"train", "evaluate", "total", "cpu_total"} <= set(m["seconds"])
    table = pd.read_csv(folder / "per_image.csv")
    assert len(table) == m["n_test"]
    assert {"dicom_id", "label", *(f"prob_{c}" for c in CLASS_NAMES), *results.SALIENCY_KEYS} <= set(table.columns)
    assert np.allclose(table[[f"prob_{c}" for c in CLASS_NAMES]].sum(axis=1), 1, atol=1e-5)
    for stage, _ in ablation.VARIANTS[name].chain:
        assert equal_stages.stage_complete(folder / stage), stage


def test_equal_stages_are_linked_not_retrained(ran, root):
    actions = {n: {s["stage"]: s["action"] for s in m["stages"]} for n, m in ran.items()}
    assert actions["full"] == dict.fromkeys(("stage1a", "stage1b", "stage2", "stage3"), "trained")
    assert actions["no_fusion"] == dict.fromkeys(("stage1a", "stage1b", "stage2"), "linked")
    assert actions["densenet"] == {"stage1b": "linked"}
    assert actions["no_contrastive"]["stage1b"] == "trained"  # no 1a upstream: not the full method's 1b
    link = ablation.variant_dir(root, "densenet", 0) / "stage1b"
    source = ablation.variant_dir(root, "no_contrastive", 0) / "stage1b"
    assert not link.is_symlink() and (link / "best.pt").read_bytes() == (source / "best.pt").read_bytes()
    assert json.loads((link / ablation.REUSED_FROM).read_text())["copied_from"] == str(source.resolve())
    # no fusion = the full method's stage-2 map with the stage-1b diagnosis
    full = pd.read_csv(ablation.variant_dir(root, "full", 0) / "per_image.csv")
    no_fusion = pd.read_csv(ablation.variant_dir(root, "no_fusion", 0) / "per_image.csv")
    assert np.allclose(full["cc"], no_fusion["cc"])


def test_train_missing_reuses_equal_stages_without_symlinks_or_hard_links(ran, root, monkeypatch):
    import errno
    import os
    import shutil

    def refused(*args, **kwargs):  # what a Google Drive mount answers
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "symlink", refused)
    monkeypatch.setattr(os, "link", refused)
    folder = ablation.variant_dir(root, "densenet", 0)
    shutil.rmtree(folder / "stage1b")
    (folder / "metrics.json").unlink()
    config = make_config("results", "smoke", run_dir=str(root), variants=("densenet",), seeds=(0,),
                         train_missing=True, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = ablation.run_ablation(config, progress=False, log=lambda *a: None)
    assert list(table["variant"]) == ["densenet"]
    stages_run = json.loads((folder / "metrics.json").read_text())["stages"]
    assert [s["action"] for s in stages_run] == ["linked"]
    assert equal_stages.stage_complete(folder / "stage1b") and not (folder / "stage1b").is_symlink()


def test_fidelity_variants_change_only_their_stage(ran, root):
    actions = {n: {s["stage"]: s["action"] for s in m["stages"]} for n, m in ran.items()}
    # another 1a loss: every stage downstream of it is new
    assert actions["pooled_triplet"] == dict.fromkeys(("stage1a", "stage1b", "stage2", "stage3"), "trained")
    # the linear probe shares the full method's 1a, and trains its own 1b onwards
    assert actions["linear_probe"] == {"stage1a": "linked", "stage1b": "trained", "stage2": "trained",
                                       "stage3": "trained"}
    saved = json.loads((ablation.variant_dir(root, "pooled_triplet", 0) / "stage1a" / "config.json").read_text())
    assert (saved["triplet_feature"], saved["triplet_reduction"]) == ("pooled", "mean")
    saved = json.loads((ablation.variant_dir(root, "linear_probe", 0) / "stage1b" / "config.json").read_text())
    assert saved["linear_probe"] is True


def test_eval_split_and_kld_eps_reach_the_variant_evaluation(ran, root, monkeypatch):
    quiet = {"progress": False, "log": lambda *a: None}
    bundle = ablation.DataCache().get_for(make_config("stage3", "smoke", **TINY), root, progress=False)
    seen = {}

    def record(predictions, **kwargs):  # the smoke set's validation split is too small for the bootstrap
        seen.update(kwargs, ids=list(predictions["dicom_id"]), maps=predictions["predicted_map"].shape)
        return {"eval_split": kwargs["eval_split"], "n_test": len(predictions["labels"])}

    with monkeypatch.context() as patch:
        patch.setattr(ablation.evaluate, "evaluate_predictions", record)
        patch.setattr(ablation, "per_image_table",
                      lambda predictions, **kw: pd.DataFrame({"dicom_id": predictions["dicom_id"]}))
        with pytest.warns(UserWarning, match="optimistic"):
            val = ablation.run_variant("no_fusion", "smoke", seed=0, run_root=root, eval_split="val", **quiet, **TINY)
    assert seen["eval_split"] == "val" and seen["ids"] == list(bundle.val.sheet["dicom_id"]) != list(bundle.test.sheet["dicom_id"])
    assert seen["maps"][0] == len(bundle.val)  # the stage-2 maps of the same images
    assert val["eval_split"] == "val" and [s["action"] for s in val["stages"]] == ["done"] * 3  # not retrained
    exact = ablation.run_variant("no_fusion", "smoke", seed=0, run_root=root, kld_eps=0.0, **quiet, **TINY)
    assert exact["eval_split"] == "test" and exact["fingerprint"] != ran["no_fusion"]["fingerprint"]
    assert exact["saliency"]["kld"] != ran["no_fusion"]["saliency"]["kld"]
    assert exact["saliency"]["cc"] == ran["no_fusion"]["saliency"]["cc"]
    # back to the defaults: the first results again
    again = ablation.run_variant("no_fusion", "smoke", seed=0, run_root=root, **quiet, **TINY)
    assert again["saliency"] == ran["no_fusion"]["saliency"] and again["classification"] == ran["no_fusion"]["classification"]


def test_a_second_call_trains_nothing_and_a_new_setting_is_not_reused(ran, root):
    config = make_config("results", "smoke", run_dir=str(root), seeds=(0,), **TINY)
    assert set(ablation.plan(config)["action"]) == {"done"}
    again = ablation.run_variant("mtunet", "smoke", seed=0, run_root=root, progress=False, log=lambda *a: None, **TINY)
    assert again == ran["mtunet"]
    other = make_config("results", "smoke", run_dir=str(root), variants=("full", "no_fusion"), lr=3e-4, **TINY)
    plan = ablation.plan(other)
    assert (plan.loc[plan["variant"] == "full", "action"] == "train").all()  # other lr, other weights
    assert (plan.loc[plan["variant"] == "no_fusion", "action"] == "link (trained earlier in this run)").all()
    seed1 = ablation.plan(make_config("results", "smoke", run_dir=str(root), seeds=(1,), **TINY))
    seed1 = seed1.set_index(["variant", "stage"])
    assert (seed1.loc["full", "action"] == "train").all() and seed1.loc["full", "est_seconds"].notna().all()
    assert seed1.loc[("densenet", "stage1b"), "action"] == "link (trained earlier in this run)"


def test_chain_signatures_match_the_trained_folders(ran, root):
    configs = ablation.variant_configs("full", "smoke", seed=0, run_root=root, **TINY)
    for config, sig in zip(configs, equal_stages.chain_signatures(configs)):
        assert equal_stages.fingerprint(sig) == equal_stages.folder_fingerprint(config.stage_dir)


def test_main_run_stages_serve_the_full_method(tmp_path):
    config = make_config("stage1a", "smoke", run_dir=str(tmp_path), **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stages.run_stage(config, stages.prepare_data(config, progress=False), progress=False)  # "notebook 02"
    plan = ablation.plan(make_config("results", "smoke", run_dir=str(tmp_path), variants=("full",), **TINY))
    assert plan.set_index("stage").loc["stage1a", "action"] == "link stage1a"
    assert plan.set_index("stage").loc["stage1b", "action"] == "train"


def test_joint_stage_trains_every_part(tmp_path, ran, root):
    config = make_config("joint", "smoke", run_dir=str(tmp_path), model="mtunet", **TINY)
    torch.manual_seed(config.seed)
    fresh = {k: v.clone() for k, v in stages.build_stage_model(config).state_dict().items()}
    data = stages.prepare_data(make_config("joint", "smoke", run_dir=str(root), **TINY), progress=False)
    model = stages.run_stage(config, data, progress=False).model
    for part, module in model.parts().items():
        weights = [k for k, _ in module.named_parameters()]
        assert any(not torch.equal(fresh[f"{part}.{k}"], module.state_dict()[k]) for k in weights), part
    assert (tmp_path / "joint" / "best.pt").is_file()


def test_results_config_checks_and_passes_on_common_fields(tmp_path):
    with pytest.raises(ValueError, match="unknown variant 'nofusion'"):
        make_config("results", "smoke", variants=("full", "nofusion"))
    with pytest.raises(ValueError, match="'seeds' must be distinct integers"):
        make_config("results", "smoke", seeds=(0, 0))
    with pytest.raises(TypeError, match="'variants' must be tuple"):
        make_config("results", "smoke", variants="full")
    with pytest.raises(TypeError, match=r"\['seed'\] do not apply"):  # ``seeds`` varies it
        make_config("results", "demo", seed=5)
    config = make_config("results", "demo", run_dir=str(tmp_path), epochs=2)
    assert ablation.stage_params(config) == {"epochs": 2}
    assert make_config("results", "demo").seeds == (0, 1, 2) and make_config("results", "smoke").seeds == (0,)
    stages_ = ablation.variant_configs("no_contrastive", "demo", seed=1, run_root=tmp_path, epochs=2)
    assert [c.stage for c in stages_] == ["stage1b", "stage2", "stage3"]
    assert stages_[0].init_from == "none" and {c.seed for c in stages_} == {1} and {c.epochs for c in stages_} == {2}
    assert stages_[0].run_dir == str(tmp_path / "ablation" / "no_contrastive" / "seed1")


def test_cli_has_ablate():
    from cxrlib.cli import build_parser

    args = build_parser().parse_args(["ablate", "--profile", "smoke", "--variants", "full", "mtunet",
                                      "--seeds", "0", "1"])
    assert args.variants == ["full", "mtunet"] and args.seeds == [0, 1]


def test_cli_ablate_runs_the_study_and_prints_the_table(ran, root, capsys):
    from cxrlib.cli import main

    tiny = [x for name, value in TINY.items() for x in ("-p", name, str(value))]
    argv = ["ablate", "--profile", "smoke", "--run-dir", str(root), "--variants", "full", "no_fusion",
            "--seeds", "0", "--no-progress", *tiny]
    assert main(argv) == 0  # every stage is done: it reads, links nothing new, and reports
    out = capsys.readouterr().out
    assert "no fusion" in out and "full method" in out and "0 stage trainings" in out
    assert main([*argv, "--no-train"]) == 0
    assert "train_missing=False" not in capsys.readouterr().out  # --no-train does not even plan


# -- the statistics, on fake results ----------------------------------------------------------
def _fake_run(root, variant, seed, rng, *, cc_shift=0.0, skill=1.0, n=40):
    labels = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + skill * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cc = np.clip(0.5 + 0.1 * np.sin(np.arange(n)) + cc_shift + rng.normal(0, 0.01, n), -1, 1)
    table = pd.DataFrame({"dicom_id": [f"img{i:03d}" for i in range(n)], "label": labels,
                          **{f"prob_{c}": probs[:, i] for i, c in enumerate(CLASS_NAMES)},
                          "cc": cc, "kld": 1 - cc, "sim": cc / 2, "nss": 2 * cc, "auc_judd": 0.5 + cc / 4})
    folder = ablation.variant_dir(root, variant, seed)
    folder.mkdir(parents=True)
    table.to_csv(folder / "per_image.csv", index=False)
    clf = metrics.classification_scores(probs, labels)
    saliency = table[list(results.SALIENCY_KEYS)].mean().to_dict()
    write_metrics(folder / "metrics.json", {"classification": clf, "saliency": saliency},
                  variant=variant, label=variant.upper(), seed=seed)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("fake"), np.random.default_rng(0)
    for seed in (0, 1, 2):
        _fake_run(root, "full", seed, rng, skill=3.0)
        _fake_run(root, "mtunet", seed, rng, cc_shift=-0.1, skill=0.0)
        _fake_run(root, "joint", seed, rng, skill=3.0)
    return root


def test_summary_reads_metrics_json_and_tests_against_the_reference(fake):
    per_seed, per_image = results.collect(fake)
    assert list(dict.fromkeys(per_seed["variant"])) == ["full", "joint", "mtunet"]  # registry order
    summary = results.compare_variants(per_seed, per_image, reference="full", n_boot=300).set_index(["variant", "metric"])
    for variant in ("full", "mtunet"):
        values = [json.loads((ablation.variant_dir(fake, variant, s) / "metrics.json").read_text())["saliency"]["cc"]
                  for s in (0, 1, 2)]
        row = summary.loc[(variant, "cc")]
        assert row["mean"] == pytest.approx(np.mean(values)) and row["std"] == pytest.approx(np.std(values, ddof=1))
        assert row["low"] <= row["mean"] <= row["high"] and row["n_seeds"] == 3 and row["n_images"] == 40
    worse = summary.loc[("mtunet", "cc")]
    assert worse["diff"] == pytest.approx(-0.1, abs=0.01) and worse["p"] < 1e-6 and worse["diff_high"] < 0
    assert worse["test"] == "paired t (images)"
    auc = summary.loc[("mtunet", "auc_macro")]
    assert auc["diff"] < 0 and auc["p"] < 0.05 and auc["test"] == "paired bootstrap (images)"
    assert summary.loc[("joint", "cc"), "p"] > 0.01  # same saliency up to noise
    assert np.isnan(summary.loc[("full", "cc"), "p"])
    verdicts = results.claims(summary.reset_index(), reference="full").set_index("variant")["verdict"]
    assert verdicts["mtunet"] == "supported"
    table = results.results_table(summary.reset_index())
    assert list(table.columns) == ["FULL", "JOINT", "MTUNET"] and len(table) == len(results.METRICS)
    assert "±" in table.iloc[0, 0] and ("p=" in table.iloc[0, 2] or "p<" in table.iloc[0, 2])
    paper = results.paper_table(summary.reset_index(), data_label="fake")
    assert list(paper["metric"]) == ["auc_micro", "cc"] and paper["paper"].notna().all()
    fig = results.results_figure(summary.reset_index(), per_seed)
    assert len([a for a in fig.axes if a.get_visible()]) == len(results.METRICS)
    missing = results.missing_runs(fake, ["full", "densenet"], [0, 3])
    assert missing == ["full/seed3", "densenet/seed0", "densenet/seed3"]


def test_vectorised_bootstrap_scores_match_the_metrics_module():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 25)
    probs = rng.dirichlet([1, 1, 1], 25).round(1)  # rounded: ties
    probs /= probs.sum(1, keepdims=True)
    idx = rng.integers(0, 25, (20, 25))
    fast = results._class_scores(probs, labels, idx)
    for b in range(len(idx)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = metrics.classification_scores(probs[idx[b]], labels[idx[b]])
        expected = [ref["auc_macro"], ref["auc_micro"], *ref["auc_per_class"].values(), ref["accuracy"], ref["f1_macro"]]
        np.testing.assert_allclose(fast[b], expected, atol=1e-12, equal_nan=True)


def test_empty_results_give_empty_tables(tmp_path):
    per_seed, per_image = results.collect(tmp_path)
    summary = results.compare_variants(per_seed, per_image)
    assert summary.empty and results.results_table(summary).empty
