import pytest

from hax_ssm.errors import HaxError
from hax_ssm.ops.patterns import parse_sparse_arch


@pytest.mark.parametrize("arch", [None, "", "none", "None"])
def test_no_branch(arch):
    assert parse_sparse_arch(arch) is None


def test_hax_alias_and_canonical_order():
    spec = parse_sparse_arch("key_selection+sign_bin_lsh", sparse_keys=64)
    assert spec == parse_sparse_arch("hax", sparse_keys=64)
    assert spec.parts == ("sign_bin_lsh", "key_selection")
    assert spec.part_keys == 32 and spec.lsh == "sign_bin_lsh" and spec.num_buckets == 256


def test_dilation_follows_data_max_length():
    spec = parse_sparse_arch("sliding_window+dilated", sparse_keys=64, data_max_length=2048)
    assert spec.part_keys == 32 and spec.dilation == 64
    spec.check_length(2048)
    with pytest.raises(HaxError, match="data_max_length"):
        spec.check_length(2049)


@pytest.mark.parametrize(
    ("arch", "kwargs", "match"),
    [
        ("sliding_windw", {}, "unknown pattern 'sliding_windw'"),
        ("sink+sink", {}, "appears twice"),
        ("full+sink", {}, "cannot be combined"),
        ("sign_bin_lsh+argmax_lsh", {}, "at most one LSH"),
        ("hax", {"sparse_keys": 63}, "does not split evenly"),
        ("sink", {"sparse_keys": 0}, "positive integer"),
        ("sign_bin_lsh", {"num_hash": 64}, "num_hash=64"),
        ("argmax_lsh", {"num_hash": 1}, "num_hash=1"),
        ("dilated", {"data_max_length": 8}, "data_max_length=8"),
        ("hax", {"lsh_center": "global"}, "lsh_center='global'"),
    ],
)
def test_bad_input_is_one_line(arch, kwargs, match):
    with pytest.raises(HaxError, match=match) as err:
        parse_sparse_arch(arch, **kwargs)
    assert "\n" not in str(err.value)


def test_argmax_allows_many_hashes():
    assert parse_sparse_arch("argmax_lsh", sparse_keys=128, num_hash=128).num_buckets == 128
