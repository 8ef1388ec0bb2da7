"""Every base model x every pattern is causal; padding never changes real positions."""

import pytest
import torch

from tests.models.tiny_models import BASES, PATTERNS, tiny_model

LENGTH = 24


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("arch", PATTERNS)
def test_future_tokens_never_change_past_logits(base, arch):
    model = tiny_model(base, arch)
    ids = torch.randint(5, 100, (2, LENGTH))
    t = 13
    changed = ids.clone()
    changed[:, t + 1 :] = torch.randint(5, 100, (2, LENGTH - t - 1))
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :])  # the perturbation does reach later positions


def test_sequence_centred_lsh_is_flagged_by_the_causality_check():
    """The reference's whole-sequence LSH centring leaks the future: the check above sees it."""
    leaked = False
    for seed in range(5):
        model = tiny_model("mamba", "sign_bin_lsh", seed=seed, lsh_center="sequence")
        ids = torch.randint(5, 100, (2, LENGTH))
        changed = ids.clone()
        changed[:, 14:] = torch.randint(5, 100, (2, LENGTH - 14))
        with torch.no_grad():
            leaked |= not torch.allclose(model(ids).logits[:, :14], model(changed).logits[:, :14])
    assert leaked


def _pad(seq: torch.Tensor, length: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    pad = torch.full((length - len(seq),), 3)
    ids = torch.cat([seq, pad]) if side == "right" else torch.cat([pad, seq])
    mask = torch.cat([torch.ones(len(seq)), torch.zeros(length - len(seq))])
    return ids, (mask if side == "right" else mask.flip(0)).long()


# left padding shifts absolute positions: only patterns that do not use them stay invariant
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize(
    ("arch", "side"),
    [
        (None, "right"),
        ("hax", "right"),
        ("sliding_window+dilated", "right"),
        ("full", "right"),
        (None, "left"),
        ("hax", "left"),
        ("argmax_lsh", "left"),
    ],
)
def test_padding_does_not_change_real_positions(base, arch, side):
    model = tiny_model(base, arch)
    long, short = torch.randint(5, 100, (LENGTH,)), torch.randint(5, 100, (15,))
    padded, mask = _pad(short, LENGTH, side)
    batch = torch.stack([long, padded])
    attention_mask = torch.stack([torch.ones(LENGTH, dtype=torch.long), mask])
    with torch.no_grad():
        together = model(batch, attention_mask=attention_mask).logits
        alone_long, alone_short = model(long[None]).logits[0], model(short[None]).logits[0]
    torch.testing.assert_close(together[0], alone_long, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together[1][mask.bool()], alone_short, rtol=1e-5, atol=1e-5)
