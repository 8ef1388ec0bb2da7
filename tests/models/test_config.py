"""Bad settings fail when the config is built, with one line naming the value and what is allowed."""

import pytest

import hax_ssm.models as hm
from hax_ssm.cli import main
from hax_ssm.errors import HaxError


@pytest.mark.parametrize(
    ("preset", "overrides", "match"),
    [
        ("mamba", {"sparse_arch": "sliding_windw"}, "unknown pattern 'sliding_windw'"),
        ("mamba2", {"sparse_arch": "hax", "sparse_keys": 63}, "does not split evenly"),
        ("mamba", {"sparse_arch": "sign_bin_lsh", "num_hash": 64}, "num_hash=64"),
        ("samba", {"attn_layers": [1, 4]}, "layer index 4 out of range 0..3"),
        ("samba", {"attn_layers": [1, 1]}, "repeated index"),
        ("samba", {"num_attention_heads": 3}, "num_attention_heads=3"),
        ("mamba2", {"n_groups": 3}, "n_groups=3"),
        ("mamba", {"attention_impl": "flash"}, "attention_impl='flash'"),
        ("mamba", {"scan_impl": "fast"}, "scan_impl='fast'"),
        ("mamba", {"hidden_size": 0}, "hidden_size=0"),
        ("mamba", {"gate_loss_weight": -1.0}, "gate_loss_weight=-1.0"),
        ("mamba", {"hiden_size": 64}, "override: hax_mamba has no setting 'hiden_size'"),
        ("mambo", {}, "preset 'mambo': unknown; allowed: mamba, mamba_2x"),
    ],
)
def test_bad_settings_are_one_line_errors(preset, overrides, match):
    with pytest.raises(HaxError, match=match) as err:
        hm.build_model(preset, **overrides)
    assert "\n" not in str(err.value)


def test_bad_config_is_refused_when_loaded_too(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "hax_mamba", "sparse_arch": "hax", "sparse_keys": 9}')
    with pytest.raises(HaxError, match="sparse_keys=9"):
        hm.load_config(bad)
    bad.write_text('{"model_type": "hax_mamba", "hiden_size": 9}')
    with pytest.raises(HaxError, match=r"bad\.json: hax_mamba has no setting 'hiden_size'"):
        hm.load_config(bad)
    bad.write_text('{"model_type": "mamba"}')
    with pytest.raises(HaxError, match="model_type 'mamba'; allowed: hax_mamba"):
        hm.load_config(bad)
    with pytest.raises(HaxError, match="sparse_keys=9"):
        hm.HaxMambaConfig(sparse_arch="hax", sparse_keys=9)


def test_sequences_beyond_data_max_length_are_refused_for_dilated():
    import torch

    model = hm.build_model("mamba", sparse_arch="dilated", sparse_keys=4, data_max_length=16)
    model(torch.randint(5, 100, (1, 16)))
    with pytest.raises(HaxError, match="exceeds data_max_length=16"):
        model(torch.randint(5, 100, (1, 17)))


def test_presets_and_overrides():
    assert set(hm.preset_names()) == {"mamba", "mamba2", "mamba_2x", "mamba2_2x", "samba"}
    config = hm.load_config("mamba2_2x", sparse_arch="key_selection+sign_bin_lsh")
    assert (config.hidden_size, config.head_dim, config.intermediate_size) == (128, 32, 256)
    assert config.sparse_spec.parts == ("sign_bin_lsh", "key_selection")
    assert hm.load_config("mamba_2x").intermediate_size == 256
    samba = hm.load_config("samba")
    assert samba.layer_kinds() == ["mamba", "attention", "mamba", "attention"] and samba.hidden_size == 64
    assert hm.load_config("mamba", sparse_arch="none").sparse_spec is None
    from_config = hm.load_config(config, sparse_keys=32)
    assert from_config.sparse_keys == 32 and from_config.hidden_size == 128 and config.sparse_keys == 64


def test_cli_reports_a_bad_preset_in_one_line(capsys):
    assert main(["models", "--preset", "mambo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "preset 'mambo'" in err[0]
