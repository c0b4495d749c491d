"""The `fewstep` command line: help on every command, `solvers` output, clear errors."""

import json

import pytest

from fewstep.cli import COMMANDS, main


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"] if command is None else [command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: fewstep" in capsys.readouterr().out


def test_solvers_table_json_and_plot(tmp_path, capsys):
    plot, rows_file = tmp_path / "errors.png", tmp_path / "rows.json"
    code = main(["solvers", "--paths", "flow", "--solvers", "ddim", "dpmpp_2m", "--schedules", "uniform",
                 "--nfe", "4", "16", "--samples", "32", "--plot", str(plot), "--json", str(rows_file)])
    assert code == 0
    out = capsys.readouterr().out
    assert "ddim/uniform" in out and "dpmpp_2m/uniform" in out
    rows = {(r["solver"], r["nfe_budget"]): r["rmse"] for r in json.loads(rows_file.read_text())}
    assert rows[("dpmpp_2m", 16)] < rows[("ddim", 16)] < rows[("ddim", 4)]  # more steps and higher order help
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("args, message", [
    (["solvers", "--solvers", "dpm++"], "unknown solver 'dpm++'; valid:"),
    (["solvers", "--schedules", "cosine"], "unknown schedule(s) ['cosine']; valid:"),
    (["solvers", "--nfe", "0"], "--nfe budgets must be integers >= 1"),
])
def test_solvers_bad_arguments(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err
