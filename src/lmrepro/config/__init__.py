"""params.yaml + profiles/<profile>.yaml → typed, validated configuration.

``params.yaml`` holds ``profile: <name>`` and every setting that is the same at every scale, by section:
the shared ``data`` / ``tokenizer`` / ``model`` / ``train`` / ``eval`` and one section per paper.
``profiles/<name>.yaml`` holds only what that scale changes, with the same sections; the loader merges it
onto params.yaml (mappings key by key, everything else replaced) and validates the result. Keeping each
profile in its own file means DVC tracks, and ``dvc exp show`` lists, only the active profile's values.

Paper sections are typed by their own packages (``lmrepro.papers.<paper>.config.SCHEMA``), found by folder
(:func:`paper_schemas`), so this module imports no paper. :func:`load_config` validates every profile (a typo
in ``paper`` fails on a laptop too) and returns the selected one as a frozen :class:`Config`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import re
from pathlib import Path
from typing import Any

from .. import yaml12
from ..paths import PARAMS_FILE, ProjectNotFound, find_params
from .schema import (Config, DataConfig, EvalConfig, HFSourceConfig, LaunchConfig, ModelConfig, TokenizerConfig,
                     TrainConfig)
from .schema_tools import ConfigError, build

PROFILES = ("smoke", "laptop", "mid", "paper")
PROFILE_DIR = "profiles"
CORE_SECTIONS = ("data", "tokenizer", "model", "train", "eval", "launch")

__all__ = [
    "Config", "ConfigError", "DataConfig", "EvalConfig", "HFSourceConfig", "LaunchConfig", "ModelConfig",
    "TokenizerConfig", "TrainConfig", "PROFILES", "load_config", "load_params", "find_params",
    "config_to_dict", "fingerprint", "derive", "paper_schemas", "profile_path",
]


def read_yaml(path: Path, what: str, name: str | None = None) -> dict[str, Any]:
    """A YAML mapping; errors name the file as ``name`` (relative to the project) and say what it holds."""
    name = name or str(path)
    if not path.is_file():
        raise ConfigError(f"{name}: file not found ({what})")
    try:
        raw = yaml12.load(path)
    except yaml12.YAMLError as err:
        raise ConfigError(f"{name}: not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Read params.yaml as plain data (no validation, no profile merged)."""
    try:
        path = Path(path) if path else find_params()
    except ProjectNotFound as err:
        raise ConfigError(str(err)) from None
    return read_yaml(path, "the project's parameters", PARAMS_FILE)


def profile_path(params_path: str | Path, profile: str) -> Path:
    """profiles/<profile>.yaml beside params.yaml."""
    return Path(params_path).parent / PROFILE_DIR / f"{profile}.yaml"


def paper_schemas() -> dict[str, type]:
    """Every paper of the project: each folder under ``lmrepro.papers`` whose ``config`` module defines
    ``SCHEMA`` (its section's dataclass) and ``ORDER`` (its place in listings). Found by folder, so adding a
    paper changes no list here."""
    package = importlib.import_module("lmrepro.papers")
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            module = importlib.import_module(f"lmrepro.papers.{info.name}.config")
            found.append((module.ORDER, info.name, module.SCHEMA))
    return {name: schema for _, name, schema in sorted(found)}


def _merge(base: Any, override: Any) -> Any:
    """``override`` onto ``base``: mappings merge key by key; any other value (lists too) replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    return override


def _in(block: Any, dotted: str) -> bool:
    """Is the dotted key (``a.b[0].c``) written in ``block``? (which file an error comes from)"""
    node = block
    for part in re.sub(r"\[\d+\]", "", dotted).split("."):
        keys = {str(k): k for k in node} if isinstance(node, dict) else {}  # YAML keys need not be strings
        if part not in keys:
            return False
        node = node[keys[part]]
    return True


def _build_section(cls, name: str, shared: dict, block: dict, profile_name: str):
    """Merge one section and build it; a ConfigError names the file the offending key is written in."""
    merged = _merge(shared.get(name) or {}, block.get(name) or {})
    try:
        return build(cls, merged, name)
    except ConfigError as err:
        key = str(err).split(":", 1)[0]
        where = (profile_name if _in(block, key) else PARAMS_FILE if _in(shared, key)
                 else f"{PARAMS_FILE} or {profile_name}")
        raise ConfigError(f"{where}: {err}") from None


def load_config(path: str | Path | None = None, profile: str | None = None) -> Config:
    """Validate params.yaml with every profile file and return the profile named by ``profile``
    (default: the ``profile`` key of params.yaml)."""
    try:
        params_path = Path(path) if path else find_params()
    except ProjectNotFound as err:
        raise ConfigError(str(err)) from None
    shared = read_yaml(params_path, "the project's parameters", PARAMS_FILE)
    schemas = paper_schemas()
    allowed = ["profile", *CORE_SECTIONS, *schemas]
    unknown = sorted(set(shared) - set(allowed), key=str)
    if unknown:
        raise ConfigError(f"{PARAMS_FILE}: {unknown[0]}: unknown top-level key; allowed are {allowed}")
    stray = sorted(p.stem for p in (params_path.parent / PROFILE_DIR).glob("*.yaml") if p.stem not in PROFILES)
    if stray:
        raise ConfigError(f"{PROFILE_DIR}/{stray[0]}.yaml: not a profile; the profiles are {list(PROFILES)}")
    # The file's own `profile` key is checked even when the caller overrides it, so a typo there
    # cannot hide until the next run without an override.
    default = shared.get("profile", "laptop")
    if not isinstance(default, str) or default not in PROFILES:
        raise ConfigError(f"{PARAMS_FILE}: profile: {default!r} is not allowed; choose one of {list(PROFILES)}")
    selected = profile if profile is not None else default
    if not isinstance(selected, str) or selected not in PROFILES:
        raise ConfigError(f"profile: {selected!r} (requested) is not allowed; choose one of {list(PROFILES)}")
    built = {}
    for name in PROFILES:
        where = f"{PROFILE_DIR}/{name}.yaml"
        block = read_yaml(profile_path(params_path, name), f"the {name} profile", where)
        extra = sorted(set(block) - set(allowed[1:]), key=str)
        if extra:
            raise ConfigError(f"{where}: {extra[0]}: unknown section; allowed are {allowed[1:]}")
        args = (shared, block, where)
        core = {s: _build_section(cls, s, *args) for s, cls in
                zip(CORE_SECTIONS, (DataConfig, TokenizerConfig, ModelConfig, TrainConfig, EvalConfig, LaunchConfig))}
        papers = {paper: _build_section(schema, paper, *args) for paper, schema in schemas.items()
                  if paper in shared or paper in block}
        cfg = Config(profile=name, **core, papers=papers)
        cfg.check(f"{where}: ")
        built[name] = cfg
    return built[selected]


def derive(obj: Any, path: str, **changes: Any) -> Any:
    """A copy of the config dataclass ``obj`` with ``changes``, rebuilt and validated like the file
    (bounds and ``check``); ``path`` names it in errors (e.g. ``hybrid_attention.sizes.s1``)."""
    return build(type(obj), {**dataclasses.asdict(obj), **changes}, path)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-serializable dict of a config dataclass (for provenance and checkpoints)."""
    return dataclasses.asdict(cfg)


def fingerprint(obj: Any) -> str:
    """Short stable hash of a config (dataclass or plain data) used to key resumable checkpoints."""
    import hashlib

    data = config_to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
