"""Tests for open_clip_c2lip.cli_errors: which errors end a command line with one ``error:`` line."""
import errno

import pytest

from open_clip_c2lip import cli_errors


def _raising(error):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_unwritable_path_is_one_error_line(code):
    error = OSError(code, "denied or read-only", "out/.bundle.x1")
    with pytest.raises(SystemExit) as exit_:
        cli_errors.run(_raising(error), [])
    assert exit_.value.code == "error: out/.bundle.x1: denied or read-only"


def test_other_os_errors_and_bugs_keep_their_traceback():
    with pytest.raises(OSError):
        cli_errors.run(_raising(OSError(errno.EIO, "I/O error", "x")), [])
    with pytest.raises(PermissionError):  # no file named: not a path the user gave
        cli_errors.run(_raising(PermissionError(errno.EACCES, "denied")), [])
    with pytest.raises(KeyError):
        cli_errors.run(_raising(KeyError("bug")), [])


def test_user_errors_are_one_error_line():
    with pytest.raises(SystemExit) as exit_:
        cli_errors.run(_raising(ValueError("bad input")), [])
    assert exit_.value.code == "error: bad input"
