"""The advreid command: expected errors are one message and exit 2, bugs keep their traceback."""

from __future__ import annotations

import types

import pytest

from advreid import cli
from advreid.errors import EXIT_BAD_INPUT, BadInputError
from advreid.params import ParamsError


@pytest.fixture()
def fake_command(monkeypatch):
    """Register a command whose main raises what the test puts in ``raised``."""
    raised: list[BaseException] = []
    module = types.ModuleType("advreid_fake_command")

    def main(argv):
        raise raised[0]

    module.main = main
    monkeypatch.setitem(__import__("sys").modules, "advreid_fake_command", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("advreid_fake_command", "a command for tests"))
    monkeypatch.delenv("ADVREID_DEBUG", raising=False)
    return raised


@pytest.mark.parametrize(
    "error",
    [ParamsError("reid.threads: must be >= 0, got -1"), FileNotFoundError("data/x.pt not found")],
    ids=["ParamsError", "FileNotFoundError"],
)
def test_an_expected_error_is_one_message_and_exit_2(fake_command, capsys, error):
    fake_command.append(error)
    assert cli.main(["fake"]) == EXIT_BAD_INPUT == 2
    err = capsys.readouterr().err
    assert err.startswith(f"advreid fake: error: {error}\n") and "Traceback" not in err


def test_debug_and_advreid_debug_reraise(fake_command, monkeypatch):
    fake_command.append(ParamsError("bad"))
    with pytest.raises(ParamsError):
        cli.main(["--debug", "fake"])
    monkeypatch.setenv("ADVREID_DEBUG", "1")
    with pytest.raises(ParamsError):
        cli.main(["fake"])


def test_a_bug_keeps_its_traceback(fake_command):
    fake_command.append(ZeroDivisionError("division by zero"))
    with pytest.raises(ZeroDivisionError):
        cli.main(["fake"])


def test_every_project_error_is_a_bad_input_error():
    from advreid.data.formats.base import DatasetFormatError
    from advreid.data.images import ImageReadError
    from advreid.data.manifest import ManifestError
    from advreid.data.validation import ValidationFailed
    from advreid.errors import CheckpointError
    from advreid.tracking.lineage import LineageError

    for error in (ParamsError, DatasetFormatError, ImageReadError, ManifestError, ValidationFailed, LineageError):
        assert issubclass(error, BadInputError)
    assert issubclass(CheckpointError, BadInputError) and issubclass(CheckpointError, ValueError)


def test_help_lists_every_command_on_its_own_line(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out.splitlines()
    for name, (_, text) in cli.COMMANDS.items():
        assert sum(1 for line in out if line.split()[:1] == [name] and line.rstrip().endswith(text)) == 1
