"""Stage configs: profiles, the parameter check notebooks rely on, and the run folder."""

import types

import pytest

from cxrlib.config import (PROFILES, STAGE_CONFIGS, config_from_namespace, load_config, make_config,
                           parameter_names)


def test_profiles_give_every_stage_a_valid_config(tmp_path):
    for profile in PROFILES:
        for stage in STAGE_CONFIGS:
            config = make_config(stage, profile, run_dir=str(tmp_path))
            assert config.stage == stage and config.profile == profile
            assert all(v % 32 == 0 for v in config.image_size)


def test_paper_profile_has_the_method_settings():
    assert make_config("stage1a", "paper").image_size == (320, 256)
    assert (make_config("stage1a", "paper").epochs, make_config("stage1a", "paper").batch_size) == (50, 32)
    for stage, epochs, batch in (("stage1b", 10, 16), ("stage2", 50, 16), ("stage3", 40, 6)):
        config = make_config(stage, "paper")
        assert (config.epochs, config.batch_size, config.image_size, config.lr) == (epochs, batch, (640, 512), 1e-4)
        assert config.pretrained is True and config.plateau_patience == 40


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['epoch'\].*valid parameters: .*epochs"):
        make_config("stage2", "demo", epoch=3)


@pytest.mark.parametrize("name, value", [("epochs", "3"), ("lr", "fast"), ("image_size", 64), ("resume", 1)])
def test_mistyped_parameter(name, value):
    with pytest.raises(TypeError, match=f"parameter '{name}' must be"):
        make_config("stage2", "demo", **{name: value})


def test_bad_choices_and_sizes():
    with pytest.raises(ValueError, match="'loss' must be one of"):
        make_config("stage1a", "smoke", loss="infonce")
    with pytest.raises(ValueError, match="multiples of 32"):
        make_config("stage2", "smoke", image_size=(100, 64))
    with pytest.raises(ValueError, match="unknown profile"):
        make_config("stage2", "colab")


def test_none_takes_the_profile_default_and_values_override():
    assert make_config("stage2", "demo", epochs=None).epochs == make_config("stage2", "demo").epochs
    assert make_config("stage2", "demo", epochs=7).epochs == 7
    assert make_config("stage2", "demo", image_size=[64, 96]).image_size == (64, 96)


def test_namespace_of_a_notebook():
    namespace = {"profile": "smoke", "epochs": 2, "run_dir": None, "np": types.ModuleType("np"),
                 "IN_COLAB": False, "_hidden": 1, "print_it": print, "In": []}
    config = config_from_namespace("stage1b", namespace)
    assert config.epochs == 2
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['learning_rate'\]"):
        config_from_namespace("stage1b", {**namespace, "learning_rate": 0.1})


def test_run_dir_from_environment_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRLIB_RUN_DIR", str(tmp_path / "runs"))
    config = make_config("stage3", "smoke", mode="finetune")
    assert config.run_dir == str(tmp_path / "runs") and config.stage_dir == tmp_path / "runs" / "stage3"
    again = load_config(config.save())
    assert again == config


def test_parameter_names_are_config_fields():
    assert "loss" in parameter_names("stage1a") and "loss" not in parameter_names("stage2")
    assert "mode" in parameter_names("stage3")


@pytest.mark.parametrize("stage", ["data", "explain", "external"])
@pytest.mark.parametrize("name", ["lr", "epochs"])
def test_notebooks_that_train_nothing_reject_training_fields(stage, name):
    with pytest.raises(TypeError, match=rf"parameter\(s\) \['{name}'\] do not apply to .*\({stage}\)"):
        make_config(stage, "smoke", **{name: 1})
    assert name not in parameter_names(stage)
    with pytest.raises(TypeError, match="do not apply"):
        config_from_namespace(stage, {"profile": "smoke", name: 1})


def test_results_passes_training_fields_on_but_rejects_what_it_ignores():
    assert make_config("results", "smoke", epochs=2).epochs == 2  # every variant's stages get it
    for name, value in (("seed", 1), ("init_from", "none"), ("resume", True)):
        with pytest.raises(TypeError, match="do not apply"):
            make_config("results", "smoke", **{name: value})


def test_stage_registry_covers_every_config():
    from cxrlib import model
    from cxrlib.training import stages
    from cxrlib.losses import CONTRASTIVE_LOSSES

    assert set(stages.STAGES) == set(STAGE_CONFIGS)
    assert all(entry.config is STAGE_CONFIGS[name] for name, entry in stages.STAGES.items())
    for name in stages.TRAINABLE_STAGES:
        entry = stages.STAGES[name]
        assert entry.upstream is None or entry.upstream in stages.STAGES, name
        assert entry.model_name(make_config(name, "smoke")) in model.MODEL_NAMES
    for choice in ("dual", "mtunet", "resse_unet"):  # the joint stage's config choices are models
        assert stages.STAGES["joint"].model_name(make_config("joint", "smoke", model=choice)) == choice
    for loss in CONTRASTIVE_LOSSES:  # every loss the step can call is a valid config choice
        make_config("stage1a", "smoke", loss=loss)
