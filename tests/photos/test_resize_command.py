"""`farm resize` misused: every path it cannot use is one line on stderr and exit 2, never a
traceback. Driven through the real CLI entry point (workers.cli.main)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import corpus
from workers.cli import build_parser
from workers.cli import main as farm

Run = tuple[int, str]


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "in.jpg"
    path.write_bytes(corpus.oriented_jpeg(1))
    return path


def resize(capsys: pytest.CaptureFixture[str], *argv: object) -> Run:
    code = farm(["resize", *map(str, argv)])
    return code, capsys.readouterr().err


def assert_one_line(run: Run, line: str) -> None:
    code, err = run
    assert (code, err.splitlines()) == (2, [line])


def test_output_under_a_regular_file(photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = photo.parent / "afile"
    afile.write_text("a regular file")
    assert_one_line(resize(capsys, photo, afile / "out"),
                    f"farm resize: cannot write to {afile / 'out'}: Not a directory")
    assert_one_line(resize(capsys, photo, afile),
                    f"farm resize: cannot write to {afile}: not a directory")
    assert afile.read_text() == "a regular file"


def test_unwritable_output_directory(photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Its own directory under /tmp, open to all: pytest's tmp_path sits under a root-only one.
    place = Path(tempfile.mkdtemp(prefix="farm-resize-"))
    try:
        place.chmod(0o755)
        shutil.copy(photo, place / "in.jpg")
        locked = place / "locked"
        locked.mkdir(mode=0o555)
        argv = ["resize", str(place / "in.jpg"), str(locked / "out")]
        # Root writes anywhere: as root, the command runs as nobody, in a forked child.
        run = resize(capsys, *argv[1:]) if os.geteuid() else farm_as_nobody(argv)
        assert_one_line(run, f"farm resize: cannot write to {locked / 'out'}: Permission denied")
        assert not (locked / "out").exists()
    finally:
        shutil.rmtree(place)


def test_files_that_cannot_be_read(photo: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: opening it without O_NONBLOCK would hang
    cases = {
        tmp_path / "missing.jpg": "No such file or directory",
        tmp_path: "a directory",
        fifo: "not a regular file",
        Path("/dev/zero"): "not a regular file",  # would be read forever
        photo / "x.jpg": "Not a directory",
    }
    for path, reason in cases.items():
        assert_one_line(resize(capsys, path, out), f"farm resize: cannot read {path}: {reason}")
    assert not out.exists()


def test_file_over_the_upload_limit_is_not_read_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import get_settings

    monkeypatch.setenv("FARM_MAX_UPLOAD_MB", "1")
    get_settings.cache_clear()
    try:
        big = tmp_path / "big.jpg"
        big.write_bytes(b"\0" * (3 * 2**20 // 2))
        assert_one_line(resize(capsys, big, tmp_path / "out"),
                        "farm resize: refused: file is 1.5 MiB, over the 1 MiB limit")
    finally:
        monkeypatch.delenv("FARM_MAX_UPLOAD_MB")
        get_settings.cache_clear()


def test_refused_image_names_the_farms_pixel_limit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(corpus.bomb_png_400mpx())
    assert_one_line(resize(capsys, bomb, tmp_path / "out"),
                    "farm resize: refused: decompression bomb refused: 400000000 pixels, over "
                    "the limit of 50000000 pixels (FARM_MAX_PIXELS)")
    assert not (tmp_path / "out").exists()


def farm_as_nobody(argv: list[str]) -> Run:
    """`farm ARGV` in a forked child that has dropped root for nobody (65534), so that file
    permissions apply; its exit code and stderr. Everything the command imports is imported
    here first: the interpreter's own files may not be readable by nobody."""
    build_parser()
    from tasks.photos import imaging  # noqa: F401 - loaded before dropping root

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.close(read)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the child exits below
            sys.stderr = open(write, "w")  # noqa: SIM115
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = farm(argv)
        except BaseException as exc:  # reported to the parent as its output
            print(f"child failed: {exc!r}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    with open(read) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err
