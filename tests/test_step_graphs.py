"""StepGraphs: a graphed training step computes what the eager one does; syncs and CPU fall back to eager."""

import threading

import pytest
import torch
import torch.nn.functional as F

from hax_ssm.models import build_model
from hax_ssm.utils.step_graphs import StepGraphs, pad_to_multiple


def test_pad_to_multiple_pads_dim_1_on_the_right():
    ids = torch.arange(6).view(2, 3)
    padded = pad_to_multiple(ids, 4, value=-1)
    assert padded.tolist() == [[0, 1, 2, -1], [3, 4, 5, -1]]
    mask = pad_to_multiple(torch.ones(2, 5, 3, dtype=torch.bool), 4, value=False)
    assert mask.shape == (2, 8, 3) and mask[:, :5].all() and not mask[:, 5:].any()
    assert pad_to_multiple(ids, 3) is ids


def test_cpu_inputs_run_the_step_eagerly_every_time():
    calls = []
    graphs = StepGraphs(lambda x: calls.append(1) or x * 2)
    for _ in range(4):
        assert graphs(torch.ones(2)).tolist() == [2.0, 2.0]
    assert len(calls) == 4 and graphs.num_graphs == 0


def _trainer(seed=0, arch=None):
    """A Mamba2 model and its step (the benchmark's): loss, backward, clip, AdamW."""
    torch.manual_seed(seed)
    model = build_model("mamba2", sparse_arch=arch, data_max_length=512).cuda().train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True, capturable=True)

    def step(ids, attn):
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            logits = model(ids, attention_mask=attn).logits
        ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        loss = (ce * attn[:, 1:].flatten()).sum() / attn[:, 1:].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return model, step


def _batches(lengths, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, 100, (3, n), generator=gen)
        attn = torch.arange(n)[None] < torch.tensor([[n], [n - 5], [n // 2]])
        out.append((ids.cuda(), attn.cuda()))
    return out


@pytest.mark.gpu
def test_graphed_steps_follow_eager_steps_across_shapes(monkeypatch):
    """Deterministic kernels (no branch, deterministic cuDNN): replays compute what eager steps do."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    batches = _batches([128, 128, 128, 128, 192, 192, 192, 192, 128])
    eager_model, eager_step = _trainer()
    graph_model, graph_step = _trainer()
    graphs = StepGraphs(graph_step, params=graph_model.parameters(), warmup=2)
    for ids, attn in batches:
        expected = eager_step(ids, attn)
        got = graphs(ids, attn)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert graphs.disabled_reason is None
    assert graphs.num_graphs == 2
    for (name, p), q in zip(eager_model.named_parameters(), graph_model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.gpu
def test_capture_survives_a_thread_that_pins_host_memory():
    """The trainer's prefetch thread pins every batch, also while the main thread captures a step."""
    _, step = _trainer()
    graphs = StepGraphs(step, warmup=1)
    stop = threading.Event()

    def pin_forever():
        while not stop.is_set():
            torch.empty(1 << 16).pin_memory()

    pinner = threading.Thread(target=pin_forever)
    pinner.start()
    try:
        for ids, attn in _batches([128] * 4):
            assert torch.isfinite(graphs(ids, attn))
    finally:
        stop.set()
        pinner.join()
    assert graphs.disabled_reason is None and graphs.num_graphs == 1


@pytest.mark.gpu
def test_a_step_that_syncs_runs_eagerly_with_a_reason():
    _, step = _trainer(arch="sliding_window+dilated")

    def syncing_step(ids, attn):
        loss = step(ids, attn)
        assert loss.item() == loss.item()  # a host read
        return loss

    graphs = StepGraphs(syncing_step, warmup=2)
    for ids, attn in _batches([64] * 4):
        assert torch.isfinite(graphs(ids, attn))
    assert graphs.num_graphs == 0 and "synchronises" in graphs.disabled_reason


@pytest.mark.gpu
def test_model_forward_and_backward_never_read_the_device():
    """No host syncs in the hot path of the models (masks given, fixed-pattern and key-selection branches)."""
    ids, attn = _batches([100])[0]
    for preset, arch in [("mamba", "key_selection"), ("mamba2", "sliding_window+dilated"), ("samba", None)]:
        model = build_model(preset, sparse_arch=arch).cuda().train()
        model(ids, attention_mask=attn).logits.sum().backward()  # warm-up (Triton compiles)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = model(ids, attention_mask=attn)
            (out.logits.float().sum() + (out.gate_loss if out.gate_loss is not None else 0)).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
