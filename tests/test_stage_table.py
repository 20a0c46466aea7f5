"""The stage table (cxrlib.config.stage_table) is the one source of the stage facts: the configs,
the registry, the checkpoints, the chain of bench/cli/variants and the finetune rule follow it."""

from dataclasses import fields

import pytest

from cxrlib.config import STAGE_CONFIGS
from cxrlib.config.stage_table import CHAIN, NETWORK_FIELDS, STAGE_TABLE, TRAINING_STAGES, has_finetune


def test_configs_follow_the_table():
    assert list(STAGE_CONFIGS) == list(STAGE_TABLE)
    for name, facts in STAGE_TABLE.items():
        defaults = {f.name: f.default for f in fields(STAGE_CONFIGS[name])}
        assert defaults["init_from"] == facts.upstream, name


def test_registry_checkpoints_and_chain_follow_the_table():
    from cxrlib.bench import stages as bench_stages
    from cxrlib.config.variants import VARIANTS
    from cxrlib.training import checkpoints, stages

    assert list(stages.STAGES) == list(STAGE_TABLE)
    assert stages.TRAINABLE_STAGES == checkpoints.CHECKPOINT_STAGES == TRAINING_STAGES
    assert CHAIN == ("stage1a", "stage1b", "stage2", "stage3") and bench_stages.CHAIN == CHAIN
    assert tuple(stage for stage, _ in VARIANTS["full"].chain) == CHAIN
    for name, entry in stages.STAGES.items():
        assert entry.config is STAGE_CONFIGS[name] and entry.upstream == STAGE_TABLE[name].upstream
        assert entry.trainable == (entry.step is not None) == (name in TRAINING_STAGES)
    assert stages.NOTEBOOK_STAGES == {f.notebook: n for n, f in STAGE_TABLE.items() if f.notebook}


def test_cli_prepare_offers_the_chain():
    from cxrlib.cli import build_parser

    args = build_parser().parse_args(["prepare"])
    assert tuple(args.stages) == CHAIN
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "--stages", "joint"])


@pytest.mark.parametrize("config, expected", [
    ({"stage": "stage3", "mode": "finetune", "finetune_epochs": 2}, True),
    ({"stage": "stage3", "mode": "finetune", "finetune_epochs": 0}, False),
    ({"stage": "stage3", "mode": "head", "finetune_epochs": 2}, False),
    ({"stage": "joint", "mode": "finetune", "finetune_epochs": 2}, False),  # no finetune phase in the table
])
def test_finetune_rule(config, expected):
    assert has_finetune(config) is expected


def test_every_network_of_the_table_has_its_fields():
    from cxrlib.model import MODEL_NAMES

    assert set(NETWORK_FIELDS) == set(MODEL_NAMES)
    assert {f.network for f in STAGE_TABLE.values() if f.network} <= set(NETWORK_FIELDS)
