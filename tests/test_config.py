"""Stage configs load from YAML with CLI overrides; bad keys name the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wsvs.runtime.config import dump_config, load_config
from wsvs.runtime.errors import InputError


@dataclass
class Inner:
    weight: float = 1.0
    scales: tuple[float, ...] = (1.0,)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 3
    path: Path | None = None


def test_yaml_then_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("inner: {weight: 2, scales: [0.5, 1]}\nsteps: 5\npath: a/b\n")
    config = load_config(Outer, path, steps=7, path=None)
    assert config == Outer(inner=Inner(weight=2.0, scales=(0.5, 1.0)), steps=7, path=Path("a/b"))
    assert load_config(Outer, None) == Outer()
    assert dump_config(config) == {"inner": {"weight": 2.0, "scales": [0.5, 1.0]}, "steps": 7, "path": "a/b"}


@pytest.mark.parametrize("text, problem", [
    ("inner: {wieght: 2}\n", "unknown key"),
    ("steps: many\n", "expected int"),
    ("- a list\n", "mapping"),
    ("steps: [\n", "not valid YAML"),
])
def test_bad_yaml_names_the_file(tmp_path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as info:
        load_config(Outer, path)
    assert str(path) in str(info.value)
