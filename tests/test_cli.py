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


# ---------------------------------------------------------------- user errors: one line, traceback on request


def _failing_command(monkeypatch, error):
    import fewstep.commands.solvers as solvers_command

    def run(args):
        raise error

    monkeypatch.setattr(solvers_command, "run", run)


@pytest.mark.parametrize("error", [
    NotADirectoryError(20, "Not a directory", "/x/file/out"),
    PermissionError(13, "Permission denied", "/read-only"),
    KeyError("missing key 'ts' in spec.safetensors"),
    FloatingPointError("loss is NaN at step 3"),
])
def test_user_errors_are_one_line(error, monkeypatch, capsys):
    _failing_command(monkeypatch, error)
    monkeypatch.delenv("FEWSTEP_TRACEBACK", raising=False)
    assert main(["solvers"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewstep solvers: error: ") and "Traceback" not in err
    assert str(error.args[-1] if isinstance(error, OSError) else error.args[0]).strip("'") in err


def test_yaml_and_safetensors_errors_are_user_errors(monkeypatch, capsys):
    import yaml
    from safetensors import SafetensorError

    for error in (yaml.YAMLError("mapping values are not allowed here"), SafetensorError("header too large")):
        _failing_command(monkeypatch, error)
        assert main(["solvers"]) == 2
        assert "error: " in capsys.readouterr().err


def test_traceback_on_request(monkeypatch):
    _failing_command(monkeypatch, ValueError("bad value"))
    with pytest.raises(ValueError, match="bad value"):
        main(["--traceback", "solvers"])
    monkeypatch.setenv("FEWSTEP_TRACEBACK", "1")
    with pytest.raises(ValueError, match="bad value"):
        main(["solvers"])


def test_bugs_are_not_hidden(monkeypatch):
    _failing_command(monkeypatch, TypeError("a bug in fewstep"))
    with pytest.raises(TypeError):
        main(["solvers"])


def test_import_fewstep_is_enough_to_load_its_pipelines():
    """DiffusionPipeline.from_pretrained finds ClassConditionalPipeline after `import fewstep`, in either order."""
    import subprocess
    import sys
    from pathlib import Path

    teacher = Path(__file__).resolve().parents[1] / "assets" / "teachers" / "mixture_flow"
    for imports in ("import fewstep; import diffusers", "import diffusers; import fewstep"):
        code = (f"{imports}\nfrom diffusers import DiffusionPipeline\n"
                f"print(type(DiffusionPipeline.from_pretrained({str(teacher)!r})).__name__)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip().splitlines()[-1] == "ClassConditionalPipeline"


def test_fewstep_warnings_are_one_line(monkeypatch, capsys):
    import warnings

    import fewstep.commands.solvers as solvers_command

    def run(args):
        from fewstep.io import describe_machine  # any fewstep module: the warning's file is inside the package
        warnings.warn_explicit("checkpoint step_000004 is damaged; resuming from step_000002", UserWarning,
                               describe_machine.__code__.co_filename, 1)
        return 0

    monkeypatch.setattr(solvers_command, "run", run)
    assert main(["solvers"]) == 0
    err = capsys.readouterr().err
    assert err.strip() == "fewstep solvers: warning: checkpoint step_000004 is damaged; resuming from step_000002"


@pytest.mark.parametrize("argv, valid", [
    (["fit-sampler", "pipe", "--steps", "2", "--out", "o.safetensors", "--solver", "sde_dpmpp_2m"], "fittable_solvers"),
    (["boss", "schedule", "pipe", "--steps", "2", "--out", "o.safetensors", "--step-rule", "dpmpp_3m"], "STEP_RULES"),
])
def test_solver_choices_come_from_the_registry(argv, valid, capsys):
    from fewstep.samplers.boss import STEP_RULES
    from fewstep.samplers.learned import fittable_solvers

    names = {"fittable_solvers": fittable_solvers(), "STEP_RULES": list(STEP_RULES)}[valid]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    choices = err.split("choose from", 1)[1]
    assert "invalid choice" in err and all(name in choices for name in names)
