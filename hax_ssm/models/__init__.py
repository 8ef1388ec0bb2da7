"""Mamba, Mamba2 and Samba with the sparse-attention branch, as HF-transformers models.

Importing this package registers the configs and models with ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM`` (model types ``hax_mamba``, ``hax_mamba2``, ``hax_samba``).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hax_ssm.models.configuration import (
    CONFIG_CLASSES,
    HaxConfig,
    HaxMamba2Config,
    HaxMambaConfig,
    HaxSambaConfig,
)
from hax_ssm.models.modeling import (
    MODEL_CLASSES,
    HaxCache,
    HaxCausalLMOutput,
    HaxForCausalLM,
    HaxMamba2ForCausalLM,
    HaxMamba2Model,
    HaxMambaForCausalLM,
    HaxMambaModel,
    HaxModel,
    HaxModelOutput,
    HaxSambaForCausalLM,
    HaxSambaModel,
)
from hax_ssm.models.presets import build_model, load_config, preset_names

for _config_class, (_model_class, _lm_class) in MODEL_CLASSES.items():
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
    AutoModelForCausalLM.register(_config_class, _lm_class, exist_ok=True)

__all__ = [
    "CONFIG_CLASSES",
    "HaxCache",
    "HaxCausalLMOutput",
    "HaxConfig",
    "HaxForCausalLM",
    "HaxMamba2Config",
    "HaxMamba2ForCausalLM",
    "HaxMamba2Model",
    "HaxMambaConfig",
    "HaxMambaForCausalLM",
    "HaxMambaModel",
    "HaxModel",
    "HaxModelOutput",
    "HaxSambaConfig",
    "HaxSambaForCausalLM",
    "HaxSambaModel",
    "build_model",
    "load_config",
    "preset_names",
]
