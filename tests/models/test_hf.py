"""transformers integration: Auto* registration and the save_pretrained / from_pretrained round trip."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import hax_ssm.models as hm
from tests.models.tiny_models import BASES, tiny_model


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("arch", [None, "hax"])
def test_save_and_load_round_trip(base, arch, tmp_path):
    model = tiny_model(base, arch)
    ids = torch.randint(5, 100, (2, 17))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    saved = load_file(tmp_path / "model.safetensors")
    assert (arch == "hax") == any(k.endswith("hash_proj") for k in saved)  # the fixed LSH projection is saved

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.to_diff_dict() | {"_name_or_path": ""} == model.config.to_diff_dict() | {"_name_or_path": ""}
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)

    backbone = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(backbone, hm.HaxModel)
    with torch.no_grad():
        torch.testing.assert_close(backbone(ids).last_hidden_state, model.backbone(ids).last_hidden_state)


@pytest.mark.parametrize("base", BASES)
def test_auto_classes_know_the_model_types(base):
    config = hm.load_config(base)
    assert config.model_type == f"hax_{base}"
    assert type(AutoConfig.for_model(config.model_type)) is type(config)
    assert isinstance(AutoModelForCausalLM.from_config(config), hm.HaxForCausalLM)
    assert isinstance(AutoModel.from_config(config), hm.HaxModel)


def test_model_types_do_not_shadow_transformers_own():
    assert type(AutoConfig.for_model("mamba")).__module__.startswith("transformers.")
    assert set(hm.CONFIG_CLASSES) == {"hax_mamba", "hax_mamba2", "hax_samba"}


def test_output_carries_losses_and_ignores_minus_100(make_labels=None):
    model = tiny_model("mamba2", "hax").train()
    ids = torch.randint(5, 100, (2, 20))
    labels = ids.clone()
    labels[:, :10] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, 9:-1].reshape(-1, 100)
    expected_lm = torch.nn.functional.cross_entropy(logits, ids[:, 10:].reshape(-1))
    torch.testing.assert_close(out.lm_loss, expected_lm)
    assert out.gate_loss is not None and out.gate_loss.ndim == 0
    torch.testing.assert_close(out.loss, out.lm_loss + model.config.gate_loss_weight * out.gate_loss)
    out.loss.backward()
    scorer = model.backbone.layers[0].mixer.branch.scorer
    assert scorer.net[0].weight.grad.abs().sum() > 0  # the gate loss trains the key scorer

    model.eval()
    with torch.no_grad():
        evaluated = model(ids, labels=labels)
    assert evaluated.gate_loss is None and evaluated.loss == evaluated.lm_loss


def test_tied_logits_are_hidden_times_embedding():
    model = tiny_model("mamba", None)
    ids = torch.randint(5, 100, (1, 6))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        expected = out.hidden_states[-1] @ model.get_input_embeddings().weight.T
    torch.testing.assert_close(out.logits, expected)
    untied = tiny_model("mamba", None, tie_word_embeddings=False)
    assert untied.get_output_embeddings() is not None
    assert untied.num_parameters() == model.num_parameters() + 100 * 32


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("arch", [None, "sliding_window+dilated"])
def test_bf16_model_follows_fp32(base, arch):
    model = tiny_model(base, arch)
    ids = torch.randint(5, 100, (2, 19))
    with torch.no_grad():
        fp32 = model(ids).logits
        bf16 = model.to(torch.bfloat16)(ids).logits
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, rtol=0.05, atol=0.05 * fp32.abs().max().item())
