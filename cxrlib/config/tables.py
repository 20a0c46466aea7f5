"""Every table of defaults in the documentation, written from the code (``cxrlib tables``).

The README, ``docs/method.md`` and ``docs/parameters.md`` hold tables of the profiles, the stage
settings and every config field with its default. They are not typed by hand: each sits between
two markers ::

    <!-- cxrlib-table: profiles -->
    ...generated text...
    <!-- /cxrlib-table: profiles -->

and :func:`render` writes the text from :data:`cxrlib.config.profiles.PROFILE_DEFAULTS` and the
dataclasses of :mod:`cxrlib.config.stage_configs`. A field or profile key added there appears in
the tables on the next ``cxrlib tables --write`` (``make tables``); ``tests/test_tables.py`` fails
while a committed table differs from what this module writes. Torch-free, like the rest of
``cxrlib.config``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

from cxrlib.config.profiles import PROFILE_DEFAULTS, PROFILES
from cxrlib.config.stage_configs import STAGE_CONFIGS, StageConfig

# the files whose marked blocks this module owns, relative to the repository root
DOCUMENTS = ("README.md", "docs/method.md", "docs/parameters.md")
# the stages that train, in the order of the chain, and the name a reader knows them by
TRAINING_STAGES = {"stage1a": "1a (02)", "stage1b": "1b (03)", "stage2": "2 (04)", "stage3": "3 (05)",
                   "joint": "joint (07)"}
# the columns of the stage-settings table: the fields that set a stage's size and schedule
STAGE_COLUMNS = ("epochs", "batch_size", "eval_batch_size", "image_size", "lr", "plateau_patience",
                 "base_width", "pretrained")
BLOCK = re.compile(r"(<!-- cxrlib-table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /cxrlib-table: (?P=name) -->)",
                   re.S)


def _fmt(value) -> str:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"  # an image size, H x W
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "()"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cell(value) -> str:
    return f"`{_fmt(value)}`".replace("|", "\\|")


def profiles_table() -> str:
    """One row per key any profile sets: the value every stage takes, and the stages that differ."""
    keys = []
    for profile in PROFILES:
        for part in PROFILE_DEFAULTS[profile].values():
            keys += [k for k in part if k not in keys]
    lines = ["| field | " + " | ".join(f"`{p}`" for p in PROFILES) + " |", "|---" * (len(PROFILES) + 1) + "|"]
    for key in keys:
        cells = []
        for profile in PROFILES:
            parts = PROFILE_DEFAULTS[profile]
            common = parts.get("common", {})
            text = _cell(common[key]) if key in common else ""
            extra = [f"{stage}: {_cell(part[key])}" for stage, part in parts.items()
                     if stage != "common" and key in part]
            text = "; ".join(([text] if text else []) + extra) or "-"
            cells.append(text)
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def stage_settings_table(profile: str) -> str:
    """The resolved size and schedule of every training stage under ``profile`` (``make_config``)."""
    from cxrlib.config import make_config

    lines = ["| stage (notebook) | " + " | ".join(f"`{c}`" for c in STAGE_COLUMNS) + " |",
             "|---" * (len(STAGE_COLUMNS) + 1) + "|"]
    for stage, label in TRAINING_STAGES.items():
        config = make_config(stage, profile, run_dir="/tmp/cxrlib-tables")  # run_dir: never created
        lines.append(f"| {label} | " + " | ".join(_cell(getattr(config, c)) for c in STAGE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _field_comments(cls) -> dict[str, str]:
    """The comment written beside each field in the class body (``name: type = value  # comment``)."""
    comments = {}
    source = inspect.getsource(cls)
    lines = source.splitlines()
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = lines[node.lineno - 1]
            if "#" in line:
                comments[node.target.id] = line.split("#", 1)[1].strip()
    return comments


def fields_table() -> str:
    """Every field of every stage config: its default before a profile applies, and the comment
    in :mod:`cxrlib.config.stage_configs` that explains it."""
    lines = ["| field | stages | default | what it is |", "|---|---|---|---|"]
    common = {f.name for f in dataclasses.fields(StageConfig)}
    seen = set()
    for cls in (StageConfig, *STAGE_CONFIGS.values()):
        comments = {**_field_comments(StageConfig), **_field_comments(cls)}
        own = [f for f in dataclasses.fields(cls) if (cls is StageConfig or f.name not in common
                                                       or f.default != StageConfig.__dataclass_fields__[f.name].default)]
        for f in own:
            if (cls.stage, f.name) in seen:
                continue
            seen.add((cls.stage, f.name))
            if cls is StageConfig:
                readers = [s for s, c in STAGE_CONFIGS.items() if f.name not in c.inapplicable]
                where = "all" if len(readers) == len(STAGE_CONFIGS) else ", ".join(readers)
            else:
                where = cls.stage
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            note = comments.get(f.name, "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | {where} | {_cell(default)} | {note} |")
    return "\n".join(lines) + "\n"


def render(name: str) -> str:
    """The text of the table called ``name`` (the word after ``cxrlib-table:`` in a marker)."""
    if name == "profiles":
        return profiles_table()
    if name == "fields":
        return fields_table()
    if name.startswith("stages-") and name.removeprefix("stages-") in PROFILES:
        return stage_settings_table(name.removeprefix("stages-"))
    raise ValueError(f"unknown table {name!r} in a cxrlib-table marker; valid: profiles, fields, "
                     + ", ".join(f"stages-{p}" for p in PROFILES))


def refresh_text(text: str) -> str:
    """``text`` with every marked block replaced by what :func:`render` writes now."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


def stale_documents(root, *, write: bool = False) -> list[str]:
    """The documents under ``root`` whose tables differ from the code (rewritten if ``write``)."""
    stale = []
    for rel in DOCUMENTS:
        path = Path(root) / rel
        if not path.exists():
            continue
        text = path.read_text()
        new = refresh_text(text)
        if new != text:
            stale.append(rel)
            if write:
                path.write_text(new)
    return stale
