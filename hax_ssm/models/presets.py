"""Presets (``configs/*.json``) and the one entry point that builds a model from them."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from hax_ssm.errors import HaxError, require
from hax_ssm.models.configuration import CONFIG_CLASSES, HaxConfig
from hax_ssm.models.modeling import MODEL_CLASSES, HaxForCausalLM

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # also reachable as configs/ at the repo root


def preset_names() -> list[str]:
    """Names of the model presets under configs/ (files whose JSON names a hax model_type)."""
    names = [p.stem for p in CONFIG_DIR.glob("*.json") if json.loads(p.read_text()).get("model_type") in CONFIG_CLASSES]
    return sorted(names, key=lambda name: (name.removesuffix("_2x"), name.endswith("_2x")))  # a base, then its 2x


def _preset_file(preset: str | Path) -> Path:
    path = Path(preset)
    if path.suffix == ".json" or path.exists():
        require(path.is_file(), f"preset file {path} does not exist")
        return path
    path = CONFIG_DIR / f"{preset}.json"
    require(path.is_file(), f"preset {str(preset)!r}: unknown; allowed: {', '.join(preset_names())} or a JSON file")
    return path


def config_fields(config_class: type[HaxConfig]) -> set[str]:
    """The constructor arguments of ``config_class`` and its hax parents: what overrides may set."""
    fields: set[str] = set()
    for cls in config_class.__mro__:
        if issubclass(cls, HaxConfig):
            fields |= {
                n
                for n, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind == p.KEYWORD_ONLY or p.kind == p.POSITIONAL_OR_KEYWORD
            }
    return fields - {"self"}


def _check_settings(config_class: type[HaxConfig], names, where: str) -> None:
    allowed = config_fields(config_class)
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise HaxError(
            f"{where}: {config_class.model_type} has no setting {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )


def load_config(preset: str | Path | HaxConfig, **overrides: Any) -> HaxConfig:
    """The config of a preset name (``mamba``, ``mamba2``, ...), a JSON file or a config, with
    ``overrides`` (e.g. ``sparse_arch="hax"``) applied; validated (HaxError on a bad value)."""
    if isinstance(preset, HaxConfig):
        _check_settings(type(preset), overrides, "override")
        return type(preset)(**{**preset.to_dict(), **overrides})
    path = _preset_file(preset)
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HaxError(f"preset file {path}: not valid JSON ({err})") from None
    model_type = values.pop("model_type", None)
    require(
        model_type in CONFIG_CLASSES,
        f"preset file {path}: model_type {model_type!r}; allowed: {', '.join(CONFIG_CLASSES)}",
    )
    config_class = CONFIG_CLASSES[model_type]
    _check_settings(config_class, values, f"preset file {path}")
    _check_settings(config_class, overrides, "override")
    return config_class(**{**values, **overrides})


def build_model(preset: str | Path | HaxConfig, **overrides: Any) -> HaxForCausalLM:
    """A freshly initialised causal LM from a preset name, a JSON file or a config, with overrides.

    Example: ``build_model("mamba2", sparse_arch="hax", sparse_keys=64)``.
    """
    config = load_config(preset, **overrides)
    return MODEL_CLASSES[type(config)][1](config)
