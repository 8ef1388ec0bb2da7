"""Recurrent decoding: token by token with the cache gives the logits of one full forward."""

import pytest
import torch

from tests.models.tiny_models import BASES, tiny_model

DECODE_PATTERNS = [None, "hax", "sliding_window+dilated", "sink", "argmax_lsh", "full"]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("arch", DECODE_PATTERNS)
def test_prefill_then_steps_equal_full_forward(base, arch):
    model = tiny_model(base, arch)
    ids = torch.randint(5, 100, (2, 21))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :6], use_cache=True)  # prefill
        logits, cache = [out.logits], out.past_key_values
        out = model(ids[:, 6:9], past_key_values=cache)  # a chunk continuing the cache
        logits, cache = [*logits, out.logits], out.past_key_values
        for t in range(9, 21):  # single steps
            out = model(ids[:, t : t + 1], past_key_values=cache)
            logits.append(out.logits)
            cache = out.past_key_values
    assert cache.seen == 21
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=1e-5, atol=1e-5)


def test_a_cache_is_not_changed_by_using_it():
    model = tiny_model("samba", "hax")
    ids = torch.randint(5, 100, (1, 12))
    with torch.no_grad():
        prefix = model(ids[:, :8], use_cache=True).past_key_values
        first = model(ids[:, 8:], past_key_values=prefix).logits
        again = model(ids[:, 8:], past_key_values=prefix).logits
    assert prefix.seen == 8
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def _greedy(model, ids, steps):
    for _ in range(steps):
        with torch.no_grad():
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("arch", [None, "hax"])
def test_generate_is_greedy_decoding(base, arch):
    model = tiny_model(base, arch)
    ids = torch.randint(5, 100, (2, 9))
    generated = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=3)
    assert torch.equal(generated, _greedy(model, ids, 6))


@pytest.mark.parametrize("base", BASES)
def test_generate_left_padded_batch_equals_one_by_one(base):
    model = tiny_model(base, "hax")
    long, short = torch.randint(5, 100, (1, 9)), torch.randint(5, 100, (1, 5))
    ids = torch.cat([long, torch.cat([torch.full((1, 4), 3), short], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    kwargs = {"max_new_tokens": 5, "do_sample": False, "eos_token_id": None, "pad_token_id": 3}
    batch = model.generate(ids, attention_mask=mask, **kwargs)
    assert torch.equal(batch[0], model.generate(long, **kwargs)[0])
    assert torch.equal(batch[1, 4:], model.generate(short, **kwargs)[0])


def test_cache_size_does_not_grow_without_a_branch():
    """SSM states are fixed-size and Samba keeps only its window: decoding memory is O(1) in length."""
    model = tiny_model("samba", None)  # layer 0 Mamba, layer 1 attention with window 6
    with torch.no_grad():
        cache = model(torch.randint(5, 100, (1, 30)), use_cache=True).past_key_values
        mamba, attention = cache.layers
        assert attention.keys.shape[1] == model.config.window_size - 1
        shapes = (mamba.conv.shape, mamba.ssm.shape, attention.keys.shape)
        cache = model(torch.randint(5, 100, (1, 1)), past_key_values=cache).past_key_values
    mamba, attention = cache.layers
    assert (mamba.conv.shape, mamba.ssm.shape, attention.keys.shape) == shapes
