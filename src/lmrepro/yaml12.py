"""YAML as DVC reads it: YAML 1.2 (``3e-3`` is a number, ``yes`` a string) and duplicate keys refused.

DVC parses params.yaml and dvc.yaml with ruamel.yaml's safe loader (YAML 1.2); PyYAML is YAML 1.1, where an
unquoted ``3e-3`` is a string. Reading the project's files with two dialects let DVC see a changed float while
the project saw a string, so every project file goes through here. Imports nothing from lmrepro.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

__all__ = ["YAMLError", "dumps", "load", "loads"]


def loads(text: str) -> Any:
    """Parse YAML 1.2 text (a duplicate key raises ``ruamel.yaml.constructor.DuplicateKeyError``, a YAMLError)."""
    # pure=True: the same resolver as DVC's loader on every machine (the C loader is YAML 1.1).
    return YAML(typ="safe", pure=True).load(text)


def load(path: str | Path) -> Any:
    """Parse a YAML 1.2 file."""
    return loads(Path(path).read_text())


def dumps(data: Any) -> str:
    """YAML 1.2 text of plain data, block style, keys in insertion order (what tests write as params)."""
    import io

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()
