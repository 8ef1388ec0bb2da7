"""HF-transformers models: one backbone and one LM head for Mamba, Mamba2 and Samba.

The three models differ only in their layers (``config.layer_kinds()``), so one backbone class
builds all of them; the per-model classes below exist for ``AutoModel`` registration.

Outputs: ``logits``; with ``labels``, ``loss = lm_loss + gate_loss_weight * gate_loss`` where
``lm_loss`` is the shifted next-token cross-entropy (labels -100 ignored) and ``gate_loss`` is the
key-selection ranking loss summed over layers (None without key selection or in eval mode).
With ``use_cache`` the outputs carry a :class:`HaxCache` that continues the sequence exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from hax_ssm.layers.attention import SlidingWindowAttention, SwiGLU
from hax_ssm.layers.mamba import MambaMixer
from hax_ssm.layers.mamba2 import Mamba2Mixer
from hax_ssm.layers.norm import RMSNorm
from hax_ssm.models.configuration import HaxConfig, HaxMamba2Config, HaxMambaConfig, HaxSambaConfig


@dataclass
class HaxCache:
    """Everything decoding needs of the past: one state per layer (None before the first
    token) and the number of tokens seen. Forward calls return a new cache; they never change
    the one passed in, so a prefix's cache can be reused."""

    layers: list[Any]
    seen: int = 0

    @classmethod
    def empty(cls, num_layers: int) -> HaxCache:
        return cls([None] * num_layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen


@dataclass
class HaxModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    gate_loss: torch.Tensor | None = None
    past_key_values: HaxCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class HaxCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    gate_loss: torch.Tensor | None = None
    past_key_values: HaxCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def _mixer(config: HaxConfig, kind: str) -> nn.Module:
    common = {"init_std": config.initializer_range, "attention_impl": config.attention_impl}
    if kind == "attention":
        return SlidingWindowAttention(
            config.hidden_size, config.num_attention_heads, config.window_size, config.rope_theta, **common
        )
    spec = config.sparse_spec
    if kind == "mamba":
        return MambaMixer(
            config.hidden_size,
            config.intermediate_size,
            d_state=config.state_size,
            d_conv=config.conv_kernel,
            dt_rank=config.time_step_rank,
            dt_min=config.time_step_min,
            dt_max=config.time_step_max,
            dt_floor=config.time_step_floor,
            dt_scale=config.time_step_scale,
            spec=spec,
            scan_impl=config.scan_impl,
            **common,
        )
    return Mamba2Mixer(
        config.hidden_size,
        n_heads=config.num_heads,
        head_dim=config.head_dim,
        d_state=config.state_size,
        n_groups=config.n_groups,
        d_conv=config.conv_kernel,
        chunk_size=config.chunk_size,
        dt_min=config.time_step_min,
        dt_max=config.time_step_max,
        dt_floor=config.time_step_floor,
        a_init_range=config.A_init_range,
        norm_eps=config.norm_eps,
        spec=spec,
        ssd_impl=config.ssd_impl,
        **common,
    )


class HaxBlock(nn.Module):
    """Pre-norm residual block: ``h + mixer(norm(h))``, then ``h + mlp(norm(h))`` for Samba."""

    def __init__(self, config: HaxConfig, kind: str):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mixer = _mixer(config, kind)
        self.mlp_norm = self.mlp = None
        if isinstance(config, HaxSambaConfig):
            self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
            self.mlp = SwiGLU(config.hidden_size, config.mlp_size, config.initializer_range)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, state: Any, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        residual = hidden_states.float() if self.residual_in_fp32 else hidden_states
        out, gate_loss, state = self.mixer(self.norm(hidden_states), attention_mask, state, use_cache)
        hidden_states = residual + out
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.mlp_norm(hidden_states))
        return hidden_states, gate_loss, state


class HaxPreTrainedModel(PreTrainedModel):
    config_class = HaxConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = False
    _is_stateful = True  # recurrent state: no assisted decoding, no cache cropping

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: every layer initialises itself when built (``reset_parameters``), so loading
        a checkpoint never re-initialises a loaded tensor, whatever the transformers version."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build an HF cache for us: the model creates its own HaxCache
        return False


class HaxModel(HaxPreTrainedModel):
    """Embedding, the layers of ``config.layer_kinds()``, final RMSNorm."""

    def __init__(self, config: HaxConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        nn.init.normal_(self.embeddings.weight, std=config.initializer_range)
        self.layers = nn.ModuleList(HaxBlock(config, kind) for kind in config.layer_kinds())
        self.norm_f = RMSNorm(config.hidden_size, config.norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: HaxCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> HaxModelOutput | tuple:
        """``input_ids [B, L]`` (or ``inputs_embeds [B, L, hidden]``), ``attention_mask [B, L]`` or
        ``[B, past + L]`` (1 = real token; pads may sit at either end).

        ``use_cache`` defaults to True when ``past_key_values`` is given, else False.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden_states = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        length = hidden_states.shape[1]
        use_cache = past_key_values is not None if use_cache is None else use_cache
        mask = _real_token_mask(attention_mask, length)
        cache = past_key_values or HaxCache.empty(len(self.layers))
        all_hidden = [] if output_hidden_states else None
        states, gate_losses = [], []
        for layer, state in zip(self.layers, cache.layers, strict=True):
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states, gate_loss, state = layer(hidden_states, mask, state, use_cache)
            states.append(state)
            if gate_loss is not None:
                gate_losses.append(gate_loss)
        hidden_states = self.norm_f(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        output = HaxModelOutput(
            last_hidden_state=hidden_states,
            gate_loss=torch.stack(gate_losses).sum() if gate_losses else None,
            past_key_values=HaxCache(states, cache.seen + length) if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )
        return output if return_dict is not False else output.to_tuple()


def _real_token_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """The last ``length`` columns as bool (None without a mask). An all-real mask is kept rather
    than tested with ``mask.all()``: that read would stall the GPU on every forward and break
    CUDA-graph capture, and multiplying by ones changes nothing."""
    if attention_mask is None:
        return None
    return attention_mask[:, -length:].bool()


class HaxForCausalLM(HaxPreTrainedModel, GenerationMixin):
    """The backbone plus the output projection: ``logits = hidden @ embedding^T`` when
    ``config.tie_word_embeddings`` (the paper's synthetic models), else an ``lm_head``."""

    def __init__(self, config: HaxConfig):
        super().__init__(config)
        self.backbone = HaxModel(config)
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            nn.init.normal_(self.lm_head.weight, std=config.initializer_range)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.backbone.embeddings = value

    def get_output_embeddings(self) -> nn.Linear | None:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: HaxCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> HaxCausalLMOutput | tuple:
        """As :meth:`HaxModel.forward`, plus ``labels [B, L]`` (position t is scored on
        ``labels[t + 1]``, -100 ignored). Returns logits, loss, lm_loss, gate_loss, past_key_values."""
        out = self.backbone(
            input_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        weight = self.backbone.embeddings.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden.to(weight.dtype), weight)
        loss = lm_loss = None
        if labels is not None:
            lm_loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
            loss = lm_loss if out.gate_loss is None else lm_loss + self.config.gate_loss_weight * out.gate_loss
        output = HaxCausalLMOutput(
            loss=loss,
            logits=logits,
            lm_loss=lm_loss,
            gate_loss=out.gate_loss,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
        )
        return output if return_dict is not False else output.to_tuple()

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: HaxCache | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Feed only the tokens the cache has not seen. Any other cache object generate() may
        have made (some transformers versions build one from the class name) is ignored."""
        cache = past_key_values if isinstance(past_key_values, HaxCache) else None
        if cache is not None:
            input_ids = input_ids[:, cache.seen :]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "past_key_values": cache, "use_cache": True}


class HaxMambaModel(HaxModel):
    config_class = HaxMambaConfig


class HaxMambaForCausalLM(HaxForCausalLM):
    config_class = HaxMambaConfig


class HaxMamba2Model(HaxModel):
    config_class = HaxMamba2Config


class HaxMamba2ForCausalLM(HaxForCausalLM):
    config_class = HaxMamba2Config


class HaxSambaModel(HaxModel):
    config_class = HaxSambaConfig


class HaxSambaForCausalLM(HaxForCausalLM):
    config_class = HaxSambaConfig


MODEL_CLASSES: dict[type[HaxConfig], tuple[type[HaxModel], type[HaxForCausalLM]]] = {
    HaxMambaConfig: (HaxMambaModel, HaxMambaForCausalLM),
    HaxMamba2Config: (HaxMamba2Model, HaxMamba2ForCausalLM),
    HaxSambaConfig: (HaxSambaModel, HaxSambaForCausalLM),
}
