"""Small models of every base and pattern for the model tests."""

import torch

from hax_ssm.models import build_model

BASES = ["mamba", "mamba2", "samba"]
# every pattern and the unions of Table 1 (None: no branch)
PATTERNS = [
    None,
    "full",
    "sliding_window",
    "sink",
    "dilated",
    "sign_bin_lsh",
    "argmax_lsh",
    "key_selection",
    "hax",
    "sliding_window+dilated",
    "sliding_window+sink",
]
# small enough for seconds on one core; chunk 8 and window 6 so short sequences span several
TINY = {
    "mamba": {"hidden_size": 32, "state_size": 8, "time_step_rank": 4},
    "mamba2": {"hidden_size": 32, "num_heads": 4, "head_dim": 16, "state_size": 8, "chunk_size": 8},
    "samba": {
        "hidden_size": 32,
        "state_size": 8,
        "num_hidden_layers": 2,
        "attn_layers": [1],
        "num_attention_heads": 2,
        "window_size": 6,
        "mlp_size": 64,
    },
}
BRANCH = {"sparse_keys": 8, "num_hash": 4, "data_max_length": 64}


def tiny_model(base: str, sparse_arch: str | None = None, seed: int = 0, **overrides):
    """A small eval-mode model of ``base`` with the branch ``sparse_arch``."""
    torch.manual_seed(seed)
    return build_model(base, sparse_arch=sparse_arch, **{**TINY[base], **BRANCH, **overrides}).eval()
