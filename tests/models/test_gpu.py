"""The models on a CUDA device: bf16 follows fp32, gradients are finite, decoding matches.

Run on a GPU machine with ``pytest -m gpu -n 0 tests/models``.
"""

import pytest
import torch

from hax_ssm.ops.scan import selective_scan
from hax_ssm.ops.ssd import ssd
from tests.models.tiny_models import BASES, tiny_model

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("arch", [None, "sliding_window+dilated", "hax"])
def test_bf16_on_gpu_trains_and_follows_fp32(base, arch):
    model = tiny_model(base, arch, data_max_length=512).cuda()
    ids = torch.randint(5, 100, (4, 300), device="cuda")
    with torch.no_grad():
        fp32 = model(ids).logits
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = model(ids).logits.float()
    if arch is None or arch == "sliding_window+dilated":  # LSH buckets and top-k may flip under bf16
        torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05 * fp32.abs().max().item())


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("arch", [None, "hax"])
def test_decoding_on_gpu_equals_full_forward(base, arch):
    model = tiny_model(base, arch).cuda()
    ids = torch.randint(5, 100, (2, 40), device="cuda")
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :30], use_cache=True)
        logits, cache = [out.logits], out.past_key_values
        for t in range(30, 40):
            out = model(ids[:, t : t + 1], past_key_values=cache)
            logits.append(out.logits)
            cache = out.past_key_values
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=1e-4, atol=1e-4)


def test_gpu_scan_and_ssd_equal_the_cpu_reference():
    torch.manual_seed(0)
    b, n_len, d, n = 2, 333, 16, 8
    x, dt = torch.randn(b, n_len, d), torch.rand(b, n_len, d)
    A, B, C = -torch.rand(d, n) * 4, torch.randn(b, n_len, n), torch.randn(b, n_len, n)
    expected = selective_scan(x, dt, A, B, C, impl="ref")[0]
    got = selective_scan(*(t.cuda() for t in (x, dt, A, B, C)))[0]
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
    xh, dth, Ah = torch.randn(b, n_len, 4, 4), torch.rand(b, n_len, 4), -torch.rand(4) * 4
    Bg, Cg = torch.randn(b, n_len, 1, n), torch.randn(b, n_len, 1, n)
    expected = ssd(xh, dth, Ah, Bg, Cg, impl="ref")[0]
    got = ssd(*(t.cuda() for t in (xh, dth, Ah, Bg, Cg)), chunk_size=64)[0]
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
