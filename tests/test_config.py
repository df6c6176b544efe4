from dataclasses import dataclass, field
from pathlib import Path

import pytest

from toremi.config import ConfigError, load_config, save_config


@dataclass
class Inner:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    compile: bool = False
    path: Path | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 20\ninner:\n  lr: 0.01\n")
    cfg = load_config(Outer, tmp_path / "c.yaml", ["inner.lr=3e-4", "compile=true", "path=/tmp/a",
                                                   "inner.betas=[0.8,0.9]"])
    assert cfg.steps == 20 and cfg.inner.lr == 3e-4 and cfg.compile is True
    assert cfg.path == Path("/tmp/a") and cfg.inner.betas == [0.8, 0.9]
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Outer, tmp_path / "saved.yaml") == cfg


def test_errors_name_the_key():
    with pytest.raises(ConfigError, match="inner.lrr"):
        load_config(Outer, None, ["inner.lrr=1"])
    with pytest.raises(ConfigError, match="steps: expected int"):
        load_config(Outer, None, ["steps=ten"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(Outer, None, ["steps"])


@dataclass
class Documented:
    plain: int = 1
    trailing: float = 0.5  # a trailing comment
    # a comment above,
    # on two lines
    above: str = "x"  # and one after
    inner: Inner = field(default_factory=Inner)


def test_help_reads_the_field_comments_and_types():
    """toremi.stage reads each field's comments from the source once; keys nest as dotted names."""
    from toremi.stage import field_docs, schema, type_name

    assert field_docs(Documented) == {"trailing": "a trailing comment",
                                      "above": "a comment above, on two lines and one after"}
    keys = {k.name: k for k in schema(Documented)}
    assert list(keys) == ["plain", "trailing", "above", "inner.lr", "inner.betas"]
    assert keys["inner.betas"].default == [0.9, 0.95] and type_name(keys["inner.betas"].type) == "list[float]"
    assert type_name(keys["trailing"].type) == "float" and keys["plain"].doc == ""
    from typing import Literal, Optional

    assert type_name(Optional[Literal["a", "b"]]) == "{a,b}|None" and type_name(Path) == "path"
