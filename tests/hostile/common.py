"""What the hostile-input tests share: the one-line error a user must see."""

from __future__ import annotations

from lesion_harvester.cli.main import main


def one_line_error(capsys, *expected: str) -> str:
    """The command's stderr (run with -q: no progress bars, no info lines): one line with every
    ``expected`` text, no traceback; returns that line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def cli_error(capsys, argv: list) -> str:
    """Run the CLI, expecting a user error: exit code 2 and one line on stderr that says which command."""
    assert main([str(a) for a in argv]) == 2
    return one_line_error(capsys, f"lesion-harvester {argv[0]}: error: ")
