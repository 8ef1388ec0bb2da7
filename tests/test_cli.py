import subprocess
import sys

from hax_ssm import __version__
from hax_ssm.cli import main


def test_version_prints(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_unknown_command_is_one_line_and_nonzero(capsys):
    assert main(["no-such-command"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hax: error:")


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "hax_ssm.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage" in out.stdout
