"""Load a Mamba checkpoint in the public HF layout (``state-spaces/mamba-*-hf``) into our Mamba.

The layout is transformers' ``MambaForCausalLM.save_pretrained``: ``config.json`` (model_type
"mamba", ``MambaConfig`` fields) and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) with tensors ``backbone.embeddings.weight``,
``backbone.layers.N.norm.weight``, ``backbone.layers.N.mixer.{in_proj, conv1d, x_proj, dt_proj,
A_log, D, out_proj}``, ``backbone.norm_f.weight`` and, when untied, ``lm_head.weight``. Our Mamba
uses the same names (by design), so loading is mostly checking: every tensor the config implies
must be there with its shape, and nothing else.

With a sparse branch (``sparse_arch=...``), the branch is added on top and its K and Q projections
start as the layer's B and C projections (the rows of ``x_proj`` after the ``dt_rank`` rows), as in
the paper's continual pre-training (PAPER.md section 5).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hax_ssm.errors import HaxError, require
from hax_ssm.models.configuration import HaxMambaConfig
from hax_ssm.models.modeling import HaxMambaForCausalLM

# MambaConfig field -> HaxMambaConfig field (same meaning)
_CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "state_size": "state_size",
    "expand": "expand",
    "conv_kernel": "conv_kernel",
    "time_step_rank": "time_step_rank",
    "time_step_min": "time_step_min",
    "time_step_max": "time_step_max",
    "time_step_floor": "time_step_floor",
    "time_step_scale": "time_step_scale",
    "layer_norm_epsilon": "norm_eps",
    "initializer_range": "initializer_range",
    "residual_in_fp32": "residual_in_fp32",
    "tie_word_embeddings": "tie_word_embeddings",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}
# MambaConfig settings our Mamba has no switch for: only these values are supported
_FIXED = {"hidden_act": "silu", "use_bias": False, "use_conv_bias": True}
_NAMES_SHOWN = 8


def is_hf_mamba_dir(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "mamba"
    except (OSError, json.JSONDecodeError):
        return False


def hf_mamba_config(path: str | Path, **overrides: Any) -> HaxMambaConfig:
    """Our config for the checkpoint in ``path`` (its config.json mapped), with ``overrides`` (the branch)."""
    file = Path(path) / "config.json"
    require(file.is_file(), f"--init-from {path}: no config.json (expected a Mamba checkpoint in the HF layout)")
    try:
        hf = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise HaxError(f"{file}: not valid JSON ({err})") from None
    require(hf.get("model_type") == "mamba", f"{file}: model_type {hf.get('model_type')!r}, expected 'mamba'")
    for key, value in _FIXED.items():
        require(hf.get(key, value) == value, f"{file}: {key}={hf[key]!r} is not supported (only {value!r})")
    values = {ours: hf[theirs] for theirs, ours in _CONFIG_FIELDS.items() if theirs in hf}
    config = HaxMambaConfig(**{**values, **overrides})
    inner = hf.get("intermediate_size")
    require(
        inner in (None, config.intermediate_size),
        f"{file}: intermediate_size={inner} != expand * hidden_size = {config.intermediate_size}",
    )
    return config


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors``, or of the shards named by ``model.safetensors.index.json``."""
    from safetensors.torch import load_file

    path = Path(path)
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        shards = json.loads(index.read_text()).get("weight_map", {})
        files = [path / name for name in sorted(set(shards.values()))]
        missing = [f.name for f in files if not f.is_file()]
        require(not missing, f"{index}: shard files missing: {', '.join(missing)}")
    else:
        raise HaxError(f"{path}: no model.safetensors or model.safetensors.index.json")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(file))
        except Exception as err:  # a truncated or foreign file
            raise HaxError(f"{file}: cannot read ({type(err).__name__}: {err})") from None
    return tensors


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def check_tensors(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: str) -> None:
    """One-line error naming missing, mis-shaped and unexpected tensors."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    mismatched = [
        f"{k} {list(found[k].shape)} (config implies {list(expected[k].shape)})"
        for k in sorted(expected.keys() & found.keys())
        if found[k].shape != expected[k].shape
    ]
    problems = [
        f"{label}: {_named(names)}"
        for label, names in (("missing", missing), ("mismatched", mismatched), ("unexpected", unexpected))
        if names
    ]
    require(not problems, f"{where}: tensors do not match config.json: {'; '.join(problems)}")


def load_hf_mamba(path: str | Path, **overrides: Any) -> HaxMambaForCausalLM:
    """Our Mamba with the weights of the HF-layout checkpoint in ``path``; a branch (from ``overrides``,
    e.g. ``sparse_arch="hax"``) starts with K = the SSM's B projection and Q = its C projection."""
    config = hf_mamba_config(path, **overrides)
    model = HaxMambaForCausalLM(config)
    expected = {k: v for k, v in model.state_dict().items() if ".branch." not in k}
    found = read_safetensors(path)
    if config.tie_word_embeddings:  # a tied head may be saved too; it is the embedding
        found.pop("lm_head.weight", None)
    check_tensors(expected, found, str(path))
    model.load_state_dict(found, strict=False)  # (casts to our fp32 parameters)
    init_branches_from_ssm(model)
    return model


@torch.no_grad()
def init_branches_from_ssm(model: HaxMambaForCausalLM) -> None:
    """Every Mamba layer's branch: K <- B projection, Q <- C projection (x_proj rows after dt_rank)."""
    for layer in model.backbone.layers:
        mixer = layer.mixer
        if getattr(mixer, "branch", None) is None:
            continue
        rank, n = mixer.dt_rank, mixer.d_state
        weight = mixer.x_proj.weight
        mixer.branch.init_kq_from_ssm(weight[rank : rank + n], weight[rank + n :])
