"""HF-transformers configs of Mamba, Mamba2 and Samba with the sparse-attention branch.

Defaults are the paper's synthetic-study models (PAPER.md section 2). Every config is checked
when it is built (also when loaded from disk): a bad value raises a one-line HaxError.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

from hax_ssm.errors import require
from hax_ssm.ops.attention import IMPLS as ATTENTION_IMPLS
from hax_ssm.ops.patterns import SparseSpec, parse_sparse_arch
from hax_ssm.ops.scan import SCAN_IMPLS
from hax_ssm.ops.ssd import SSD_IMPLS

# token ids of the joint recall data (PAPER.md section 1)
BOS, EOS, PAD = 1, 2, 3


def _positive_int(name: str, value: Any) -> None:
    require(isinstance(value, int) and value >= 1, f"{name}={value!r}: must be a positive integer")


def _one_of(name: str, value: Any, allowed) -> None:
    require(value in allowed, f"{name}={value!r}: allowed: {', '.join(map(str, allowed))}")


def _check_time_steps(config: PretrainedConfig) -> None:
    low, high = config.time_step_min, config.time_step_max
    require(0 < low <= high, f"time_step_min={low}, time_step_max={high}: need 0 < min <= max")


class HaxConfig(PretrainedConfig):
    """Fields shared by every model: sizes, the sparse branch, and the token ids."""

    def __init__(
        self,
        vocab_size: int = 100,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        norm_eps: float = 1e-5,
        initializer_range: float = 0.1,
        residual_in_fp32: bool = True,
        sparse_arch: str | None = None,
        sparse_keys: int = 64,
        num_hash: int = 8,
        data_max_length: int = 2048,
        gate_loss_weight: float = 0.1,
        lsh_center: str = "causal",
        attention_impl: str = "auto",
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        bos_token_id: int = BOS,
        eos_token_id: int = EOS,
        pad_token_id: int = PAD,
        **kwargs: Any,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        self.residual_in_fp32 = residual_in_fp32
        self.sparse_arch = None if sparse_arch is None or sparse_arch.strip().lower() in ("", "none") else sparse_arch
        self.sparse_keys = sparse_keys
        self.num_hash = num_hash
        self.data_max_length = data_max_length
        self.gate_loss_weight = gate_loss_weight
        self.lsh_center = lsh_center
        self.attention_impl = attention_impl
        self.use_cache = use_cache
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )
        self.validate_hax()

    @property
    def sparse_spec(self) -> SparseSpec | None:
        """The branch's validated pattern, None without a branch."""
        return parse_sparse_arch(
            self.sparse_arch,
            sparse_keys=self.sparse_keys,
            num_hash=self.num_hash,
            data_max_length=self.data_max_length,
            lsh_center=self.lsh_center,
        )

    def layer_kinds(self) -> list[str]:
        """The mixer of each layer: "mamba", "mamba2" or "attention"."""
        raise NotImplementedError

    def validate_hax(self) -> None:
        """Raise a one-line HaxError on any bad value."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers"):
            _positive_int(name, getattr(self, name))
        self.sparse_spec  # noqa: B018 -- parsing is the check
        _one_of("attention_impl", self.attention_impl, ("auto", *ATTENTION_IMPLS))
        require(self.gate_loss_weight >= 0, f"gate_loss_weight={self.gate_loss_weight}: must be non-negative")


class HaxMambaConfig(HaxConfig):
    """Mamba (PAPER.md: hidden 64, 2 layers, expand 2, d_state 16, conv 4, dt_rank 8)."""

    model_type = "hax_mamba"

    def __init__(
        self,
        state_size: int = 16,
        expand: int = 2,
        conv_kernel: int = 4,
        time_step_rank: int | str = 8,
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
        time_step_scale: float = 1.0,
        scan_impl: str = "auto",
        hidden_size: int = 64,
        **kwargs: Any,
    ):
        self.state_size = state_size
        self.expand = expand
        self.conv_kernel = conv_kernel
        self.time_step_rank = math.ceil(hidden_size / 16) if time_step_rank == "auto" else time_step_rank
        self.time_step_min = time_step_min
        self.time_step_max = time_step_max
        self.time_step_floor = time_step_floor
        self.time_step_scale = time_step_scale
        self.scan_impl = scan_impl
        super().__init__(hidden_size=hidden_size, **kwargs)

    @property
    def intermediate_size(self) -> int:
        return self.expand * self.hidden_size

    def layer_kinds(self) -> list[str]:
        return ["mamba"] * self.num_hidden_layers

    def validate_hax(self) -> None:
        super().validate_hax()
        for name in ("state_size", "expand", "conv_kernel", "time_step_rank"):
            _positive_int(name, getattr(self, name))
        _check_time_steps(self)
        _one_of("scan_impl", self.scan_impl, SCAN_IMPLS)


class HaxMamba2Config(HaxConfig):
    """Mamba2 (PAPER.md: hidden 64, 2 layers, 8 heads x 16, d_state 32, 1 group, chunk 256)."""

    model_type = "hax_mamba2"

    def __init__(
        self,
        num_heads: int = 8,
        head_dim: int = 16,
        state_size: int = 32,
        n_groups: int = 1,
        conv_kernel: int = 4,
        chunk_size: int = 256,
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
        A_init_range: tuple[float, float] | list[float] = (1.0, 16.0),
        ssd_impl: str = "auto",
        **kwargs: Any,
    ):
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.state_size = state_size
        self.n_groups = n_groups
        self.conv_kernel = conv_kernel
        self.chunk_size = chunk_size
        self.time_step_min = time_step_min
        self.time_step_max = time_step_max
        self.time_step_floor = time_step_floor
        self.A_init_range = tuple(A_init_range)
        self.ssd_impl = ssd_impl
        super().__init__(**kwargs)

    @property
    def intermediate_size(self) -> int:
        return self.num_heads * self.head_dim

    def layer_kinds(self) -> list[str]:
        return ["mamba2"] * self.num_hidden_layers

    def validate_hax(self) -> None:
        super().validate_hax()
        for name in ("num_heads", "head_dim", "state_size", "n_groups", "conv_kernel", "chunk_size"):
            _positive_int(name, getattr(self, name))
        require(
            self.num_heads % self.n_groups == 0,
            f"n_groups={self.n_groups}: must divide num_heads={self.num_heads}",
        )
        _check_time_steps(self)
        low, high = self.A_init_range
        require(0 < low <= high, f"A_init_range={list(self.A_init_range)}: need 0 < low <= high")
        _one_of("ssd_impl", self.ssd_impl, SSD_IMPLS)


class HaxSambaConfig(HaxMambaConfig):
    """Samba: Mamba layers and sliding-window attention layers, each followed by a SwiGLU MLP.

    PAPER.md: 2 Mamba + 2 attention layers, hidden 64, window 64 (the reference file says
    hidden 32; we follow the paper). The Mamba layers take the sparse branch too.
    """

    model_type = "hax_samba"

    def __init__(
        self,
        attn_layers: tuple[int, ...] | list[int] = (1, 3),
        num_attention_heads: int = 4,
        window_size: int = 64,
        rope_theta: float = 10000.0,
        mlp_size: int | None = None,
        num_hidden_layers: int = 4,
        time_step_rank: int | str = "auto",
        initializer_range: float = 0.02,
        hidden_size: int = 64,
        **kwargs: Any,
    ):
        self.attn_layers = list(attn_layers)
        self.num_attention_heads = num_attention_heads
        self.window_size = window_size
        self.rope_theta = rope_theta
        # SwiGLU width as flash-linear-attention's GatedMLP: 4 * hidden * 2/3, rounded up to 256
        self.mlp_size = mlp_size or 256 * math.ceil(hidden_size * 4 * 2 / 3 / 256)
        super().__init__(
            num_hidden_layers=num_hidden_layers,
            time_step_rank=time_step_rank,
            initializer_range=initializer_range,
            hidden_size=hidden_size,
            **kwargs,
        )

    def layer_kinds(self) -> list[str]:
        return ["attention" if i in self.attn_layers else "mamba" for i in range(self.num_hidden_layers)]

    def validate_hax(self) -> None:
        super().validate_hax()
        n = self.num_hidden_layers
        for i in self.attn_layers:
            require(
                isinstance(i, int) and 0 <= i < n,
                f"attn_layers={self.attn_layers}: layer index {i!r} out of range 0..{n - 1} (num_hidden_layers={n})",
            )
        require(len(set(self.attn_layers)) == len(self.attn_layers), f"attn_layers={self.attn_layers}: repeated index")
        for name in ("num_attention_heads", "window_size", "mlp_size"):
            _positive_int(name, getattr(self, name))
        heads = self.num_attention_heads
        require(
            self.hidden_size % heads == 0 and (self.hidden_size // heads) % 2 == 0,
            f"num_attention_heads={heads}: must split hidden_size={self.hidden_size} into heads of even size (rotary)",
        )


CONFIG_CLASSES: dict[str, type[HaxConfig]] = {
    c.model_type: c for c in (HaxMambaConfig, HaxMamba2Config, HaxSambaConfig)
}
