"""The defaults tables of README.md and docs/ are written from the code (cxrlib.config.tables)."""

from pathlib import Path

import pytest

from cxrlib.config import profiles, stage_configs, tables

ROOT = Path(__file__).resolve().parents[1]


def test_committed_tables_equal_what_the_code_writes():
    stale = tables.stale_documents(ROOT)
    assert not stale, f"defaults tables differ from the code in {stale}; run `make tables` and commit"


def test_every_document_has_its_tables():
    text = {rel: (ROOT / rel).read_text() for rel in tables.DOCUMENTS}
    assert "<!-- cxrlib-table: profiles -->" in text["README.md"]
    assert "<!-- cxrlib-table: stages-paper -->" in text["docs/method.md"]
    assert "<!-- cxrlib-table: fields -->" in text["docs/parameters.md"]


def test_a_changed_default_makes_the_committed_text_stale(monkeypatch):
    block = "<!-- cxrlib-table: stages-demo -->\n" + tables.render("stages-demo") + "<!-- /cxrlib-table: stages-demo -->"
    assert tables.refresh_text(block) == block
    monkeypatch.setitem(profiles.PROFILE_DEFAULTS["demo"], "stage1b", {"epochs": 7})
    new = tables.refresh_text(block)
    assert new != block and "| 1b (03) | `7` |" in new


def test_a_new_profile_key_and_a_new_field_appear_without_editing_the_generator(monkeypatch):
    monkeypatch.setitem(profiles.PROFILE_DEFAULTS["paper"], "stage2", {
        **profiles.PROFILE_DEFAULTS["paper"]["stage2"], "brand_new_switch": 3})
    assert "| `brand_new_switch` | - | - | stage2: `3` |" in tables.profiles_table()
    fields = tables.fields_table()
    for f in ("triplet_feature", "triplet_reduction", "kld_eps", "frozen_bn"):
        assert f"| `{f}` |" in fields
    assert "| `triplet_reduction` | stage1a | `sum` | sum over triplets (the code)" in fields


def test_stage_table_reads_the_resolved_config():
    from cxrlib.config import make_config

    text = tables.render("stages-paper")
    c = make_config("stage1a", "paper", run_dir="/tmp/x")
    assert f"| 1a (02) | `{c.epochs}` | `{c.batch_size}` | `{c.eval_batch_size}` | `{c.image_size[0]}x{c.image_size[1]}` |" in text


def test_an_unknown_table_name_is_reported():
    with pytest.raises(ValueError, match="unknown table 'nonsense'"):
        tables.refresh_text("<!-- cxrlib-table: nonsense -->\n<!-- /cxrlib-table: nonsense -->")


def test_the_command_reports_stale_tables(tmp_path, monkeypatch, capsys):
    from cxrlib import cli

    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("<!-- cxrlib-table: profiles -->\nold\n<!-- /cxrlib-table: profiles -->\n")
    monkeypatch.setattr("cxrlib.paths.repository_root", lambda: tmp_path)
    assert cli.main(["tables"]) == 1 and "make tables" in capsys.readouterr().err
    assert cli.main(["tables", "--write"]) == 0
    assert cli.main(["tables"]) == 0
    assert "| `synthetic_images` |" in (tmp_path / "README.md").read_text()
