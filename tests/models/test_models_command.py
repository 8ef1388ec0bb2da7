import re
from pathlib import Path

from hax_ssm.cli import main
from hax_ssm.models.commands import VARIANTS, variant_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_is_what_the_command_prints(capsys):
    assert main(["models"]) == 0
    printed = capsys.readouterr().out.strip()
    in_readme = re.search(r"<!-- models-table -->\n(.*?)\n<!-- /models-table -->", README.read_text(), re.S)
    assert in_readme, "README.md lost its models table markers"
    assert in_readme.group(1) == printed, "README table is stale: paste the output of `hax models`"


def test_table_counts_follow_the_models():
    rows = variant_table(["mamba"]).splitlines()[2:]
    counts = {row.split("|")[2].strip(" `"): int(row.split("|")[3].replace(",", "")) for row in rows}
    assert len(counts) == len(VARIANTS)
    # positional branches add xx_proj (d_inner x 2 d_state) and the gate E (d_inner) per layer
    assert counts["sliding_window"] - counts["none"] == 2 * (128 * 32 + 128)
    # key selection adds its scorer MLP: (32*32 + 32) * 2 + 32 + 1 per layer
    assert counts["key_selection"] - counts["sliding_window"] == 2 * (2 * (32 * 32 + 32) + 33)
    assert counts["hax"] == counts["key_selection"]
