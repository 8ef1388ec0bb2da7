"""Continual pre-training from a Mamba checkpoint in the public HF layout, written by transformers itself."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import MambaConfig, MambaForCausalLM

from hax_ssm.cli import main
from hax_ssm.errors import HaxError
from hax_ssm.lm.eval_lm import ModelRunner
from hax_ssm.lm.train import LMTrainer
from hax_ssm.models.hf_mamba import load_hf_mamba
from tests.lm.lm_runs import cli_flags, tiny_lm_config

VOCAB = 320  # >= the fixture corpus's 271 tokens
D_STATE, DT_RANK = 8, 2


def write_checkpoint(path, tie: bool, seed: int = 0) -> MambaForCausalLM:
    """transformers' own save_pretrained of a tiny random Mamba, every tensor moved off its init value."""
    torch.manual_seed(seed)
    config = MambaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        state_size=D_STATE,
        expand=2,
        conv_kernel=4,
        time_step_rank=DT_RANK,  # not 'auto' (= 1): the B/C rows then start at an offset that shows
        tie_word_embeddings=tie,
    )
    model = MambaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {tie: (root / f"tie{tie}", write_checkpoint(root / f"tie{tie}", tie)) for tie in (True, False)}


@pytest.mark.parametrize("tie", [True, False])
def test_logits_equal_transformers_mamba(checkpoints, tie):
    path, reference = checkpoints[tie]
    ours = load_hf_mamba(path).eval()
    assert (ours.lm_head is None) == tie
    ids = torch.randint(0, VOCAB, (2, 29))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_greedy_decoding_with_our_cache_equals_transformers_generate(checkpoints):
    path, reference = checkpoints[False]
    prompt = torch.randint(0, VOCAB, (1, 17))
    expected = reference.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, 17:].tolist()
    runner = ModelRunner(load_hf_mamba(path).eval(), torch.device("cpu"), "fp32")
    assert runner.generate(prompt[0].tolist(), 8) == expected


def test_branch_starts_from_b_and_c_and_the_rest_is_the_checkpoint(checkpoints):
    path, reference = checkpoints[True]
    ours = load_hf_mamba(path, sparse_arch="hax", sparse_keys=8, num_hash=4)
    theirs = reference.state_dict()
    for name, value in ours.state_dict().items():
        if ".branch." not in name:
            assert torch.equal(value, theirs[name]), name
    for layer in ours.backbone.layers:
        x_proj, branch = layer.mixer.x_proj.weight, layer.mixer.branch
        k_rows, q_rows = branch.xx_proj.weight.split(D_STATE)
        assert torch.equal(k_rows, x_proj[DT_RANK : DT_RANK + D_STATE])  # K <- B
        assert torch.equal(q_rows, x_proj[DT_RANK + D_STATE :])  # Q <- C
        assert torch.equal(branch.E, torch.ones_like(branch.E))


def test_missing_and_mismatched_tensors_are_named_in_one_line(checkpoints, tmp_path, built_corpus, capsys):
    path = tmp_path / "broken"
    shutil.copytree(checkpoints[True][0], path)
    tensors = load_file(path / "model.safetensors")
    del tensors["backbone.layers.1.mixer.D"]
    tensors["backbone.norm_f.weight"] = torch.ones(15)
    tensors["backbone.extra.weight"] = torch.ones(1)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(HaxError) as err:
        load_hf_mamba(path)
    message = str(err.value)
    assert "\n" not in message
    assert "missing: backbone.layers.1.mixer.D" in message
    assert "mismatched: backbone.norm_f.weight [15] (config implies [16])" in message
    assert "unexpected: backbone.extra.weight" in message
    assert main(cli_flags(built_corpus, tmp_path / "run", init_from=str(path))) == 2
    assert "backbone.layers.1.mixer.D" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_config_we_cannot_represent_is_refused(checkpoints, tmp_path):
    path = tmp_path / "biased"
    shutil.copytree(checkpoints[True][0], path)
    config = (path / "config.json").read_text().replace('"use_bias": false', '"use_bias": true')
    (path / "config.json").write_text(config)
    with pytest.raises(HaxError, match="use_bias=True is not supported"):
        load_hf_mamba(path)


def test_continual_pretraining_trains_and_resumes_without_the_checkpoint(checkpoints, built_corpus, tmp_path):
    source = tmp_path / "mamba-tiny-hf"
    shutil.copytree(checkpoints[True][0], source)
    cfg = tiny_lm_config(built_corpus, tmp_path / "run", init_from=str(source), steps=6)
    trainer = LMTrainer(cfg)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.fit(stop_at=3) is None
    shutil.rmtree(source)  # a resumed run rebuilds its model from the run's own config
    assert LMTrainer(cfg, resume=True).fit()["steps"] == 6
    model = LMTrainer(cfg, resume=True).model
    assert model.config.hidden_size == 16 and model.config.sparse_arch == "argmax_lsh+key_selection"
    x_proj = "backbone.layers.0.mixer.x_proj.weight"
    assert not torch.equal(model.state_dict()[x_proj], start[x_proj])  # trained
