"""The Mamba / Mamba2 mixers: initialisation, and where the branch output enters."""

import pytest
import torch
import torch.nn.functional as F

from hax_ssm.layers.mamba import MambaMixer
from hax_ssm.layers.mamba2 import Mamba2Mixer
from hax_ssm.layers.norm import GatedRMSNorm, RMSNorm
from hax_ssm.ops.patterns import parse_sparse_arch

SPEC = parse_sparse_arch("sliding_window", sparse_keys=4)


def _mixers(kind: str, spec):
    torch.manual_seed(0)
    if kind == "mamba":
        return MambaMixer(16, 32, d_state=4, dt_rank=2, spec=spec)
    return Mamba2Mixer(16, n_heads=4, head_dim=8, d_state=4, chunk_size=8, spec=spec)


def test_mamba_init_follows_the_paper():
    mixer = MambaMixer(16, 32, d_state=4, dt_rank=2, dt_min=0.01, dt_max=0.05)
    assert torch.equal(-torch.exp(mixer.A_log), -torch.arange(1.0, 5.0).expand(32, 4))  # S4D-real
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5) and dt.std() > 0
    assert torch.equal(mixer.D, torch.ones(32))
    assert mixer.dt_proj.weight.abs().max() <= 2**-0.5


def test_mamba2_init_follows_the_paper():
    mixer = Mamba2Mixer(16, n_heads=64, head_dim=2, d_state=4, dt_min=0.01, dt_max=0.05)
    A = torch.exp(mixer.A_log)
    assert A.min() >= 1 and A.max() <= 16 and A.std() > 0
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_branch_with_zero_gate_is_the_plain_mixer(kind):
    """The branch output is E * O added inside the mixer: E = 0 gives the mixer without a branch."""
    plain, with_branch = _mixers(kind, None), _mixers(kind, SPEC)
    with_branch.load_state_dict(plain.state_dict(), strict=False)
    h = torch.randn(2, 11, 16)
    with torch.no_grad():
        with_branch.branch.E.zero_()
        torch.testing.assert_close(with_branch(h)[0], plain(h)[0])
        with_branch.branch.E.fill_(1.0)
        assert not torch.allclose(with_branch(h)[0], plain(h)[0])


def test_gated_rmsnorm_normalises_each_group_after_the_gate():
    norm = GatedRMSNorm(8, n_groups=2, eps=0.0)
    y, z = torch.randn(3, 8), torch.randn(3, 8)
    out = norm(y, z)
    gated = (y * F.silu(z)).view(3, 2, 4)
    expected = gated / gated.pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(out, expected.view(3, 8))


def test_rmsnorm_output_follows_its_weight_dtype():
    norm = RMSNorm(4).to(torch.bfloat16)
    x = torch.randn(2, 4, dtype=torch.float32)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt(), atol=1e-2, rtol=1e-2)
