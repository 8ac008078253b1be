"""Zip bundles: every kind of hostile zip is refused with a specific message; packing is capped."""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from hivemind_cluster.core.errors import InvalidInput, NotFound
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.bundles import (
    INPUT_RULES,
    MAX_FILES,
    RESULT_RULES,
    BundleRules,
    bundle_from_path,
    check_bundle,
    default_command,
    pack_directory,
    unpack_bundle,
    unpacked_size,
)
from tests.support.scratch import zip_of


def within(max_unpacked: int) -> BundleRules:
    """The input rules with a smaller unpacked cap."""
    return replace(INPUT_RULES, max_unpacked_bytes=max_unpacked)


def zeros_zip(name: str, size: int) -> bytes:
    """A real zip bomb member: ``size`` zero bytes, streamed so the test stays small in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as sink:
            block = bytes(MIB)
            for _ in range(size // MIB):
                sink.write(block)
    return buffer.getvalue()


def test_good_bundle_round_trip(tmp_path: Path) -> None:
    data = zip_of(
        {"main.py": b"print('hi')\n", "lib/util.py": b"X = 1\n", "data/": b""}, zipfile.ZIP_DEFLATED
    )
    assert check_bundle(data) == ["main.py", "lib/util.py", "data/"]
    unpack_bundle(data, tmp_path / "work")
    assert (tmp_path / "work" / "main.py").read_bytes() == b"print('hi')\n"
    assert (tmp_path / "work" / "lib" / "util.py").read_text() == "X = 1\n"
    assert (tmp_path / "work" / "data").is_dir()


def test_task_bundles_stay_readable_by_the_task_whatever_the_umask(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("lib/util.py", b"X = 1\n")
        script = zipfile.ZipInfo("run.sh")
        script.external_attr = (stat.S_IFREG | 0o700) << 16
        archive.writestr(script, b"#!/bin/sh\n")
    previous = os.umask(0o077)
    try:
        unpack_bundle(buffer.getvalue(), tmp_path / "work")
    finally:
        os.umask(previous)
    paths = ["lib", "lib/util.py", "run.sh"]
    modes = [stat.S_IMODE((tmp_path / "work" / path).stat().st_mode) for path in paths]
    assert modes == [0o755, 0o644, 0o755]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../x", "bundle entry '../x' escapes the bundle"),
        ("a/../../x", "bundle entry 'a/../../x' escapes the bundle"),
        ("a\\..\\..\\x", "escapes the bundle"),
        ("/etc/passwd", "bundle entry '/etc/passwd' is an absolute path"),
        ("C:/windows/x", "is an absolute path"),
    ],
)
def test_paths_outside_the_bundle_are_refused(tmp_path: Path, name: str, message: str) -> None:
    data = zip_of({"ok.txt": b"fine", name: b"evil"}, zipfile.ZIP_DEFLATED)
    with pytest.raises(InvalidInput, match=message.replace("\\", "\\\\")):
        check_bundle(data)
    with pytest.raises(InvalidInput, match=r"escapes|absolute"):
        unpack_bundle(data, tmp_path / "work")
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "work" / "ok.txt").exists(), "checked before anything is written"


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("passwd")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidInput, match="bundle entry 'passwd' is a symbolic link"):
        unpack_bundle(buffer.getvalue(), tmp_path)
    assert not (tmp_path / "passwd").exists()


def test_real_zip_bomb_is_refused_by_declared_size() -> None:
    data = zeros_zip("zeros", 300 * MIB)
    assert len(data) < 1 * MIB  # 300 MiB of zeros deflates to ~300 KB
    with pytest.raises(InvalidInput, match=r"(unpacks to more than 256 MiB|200:1) \(zip bomb\?\)"):
        check_bundle(data)


def test_absurd_compression_ratio_is_refused() -> None:
    data = zeros_zip("zeros", 10 * MIB)  # within the size cap, but ~1000:1
    with pytest.raises(InvalidInput, match=r"'zeros' is compressed more than 200:1 \(zip bomb\?\)"):
        check_bundle(data)


def test_many_small_files_over_the_unpacked_cap() -> None:
    data = zip_of({f"f{i}": bytes(64 * 1024) for i in range(20)}, zipfile.ZIP_STORED)
    with pytest.raises(InvalidInput, match=r"^bundle unpacks to more than 1 MiB \(zip bomb\?\)$"):
        check_bundle(data, within(MIB))


def test_too_many_files() -> None:
    data = zip_of({f"f{i}": b"" for i in range(MAX_FILES + 1)}, zipfile.ZIP_STORED)
    with pytest.raises(InvalidInput, match="bundle has more than 10000 files"):
        check_bundle(data)


@pytest.mark.parametrize("data", [b"", b"hello", b"PK\x03\x04" + bytes(100)])
def test_not_a_zip(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="bundle is not a zip file"):
        check_bundle(data)


def test_too_large_compressed(tmp_path: Path) -> None:
    small = replace(INPUT_RULES, max_zip_bytes=16 * MIB)
    with pytest.raises(InvalidInput, match="bundle is larger than 16 MiB"):
        check_bundle(bytes(16 * MIB + 1), small)
    with (tmp_path / "sparse.zip").open("wb") as sparse:  # a file: its size, not its bytes
        sparse.truncate(21 * 1024 * MIB)
    with pytest.raises(InvalidInput, match="bundle is larger than 20 GiB"):
        check_bundle(tmp_path / "sparse.zip")


def lying_zip(actual: bytes, declared_size: int) -> bytes:
    """A stored member whose local and central headers claim ``declared_size`` bytes."""
    data = bytearray(zip_of({"big": actual}, zipfile.ZIP_STORED))
    size = struct.pack("<I", len(actual))
    for offset in (data.find(b"PK\x03\x04") + 22, data.find(b"PK\x01\x02") + 24):
        assert data[offset : offset + 4] == size
        data[offset : offset + 4] = struct.pack("<I", declared_size)
    return bytes(data)


def test_lying_header_cannot_bypass_the_cap(tmp_path: Path) -> None:
    data = lying_zip(bytes(2 * MIB), declared_size=1000)
    assert check_bundle(data) == ["big"]  # the headers alone look harmless
    with pytest.raises(InvalidInput, match=r"bundle entry 'big' is corrupt|unpacks to more than"):
        unpack_bundle(data, tmp_path / "work", within(MIB))
    written = tmp_path / "work" / "big"
    assert not written.exists() or written.stat().st_size <= MIB


def test_streaming_cap_counts_real_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Even if the checks before extraction were fooled, extraction stops at the cap.
    monkeypatch.setattr("hivemind_cluster.model.bundles.checked_members", lambda a, m: a.infolist())
    data = zip_of({"a": bytes(MIB), "b": bytes(MIB)}, zipfile.ZIP_DEFLATED)
    with pytest.raises(InvalidInput, match="unpacks to more than 1048586 bytes"):
        unpack_bundle(data, tmp_path / "work", within(MIB + 10))
    assert (tmp_path / "work" / "b").stat().st_size <= 10


def test_duplicate_entries_clash(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a", b"1")
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("a", b"2")
    with pytest.raises(InvalidInput, match="bundle entry 'a' clashes with another entry"):
        unpack_bundle(buffer.getvalue(), tmp_path)


def test_pack_regular_files_only(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "result.txt").write_text("42\n")
    (tmp_path / "sub" / "more.bin").write_bytes(b"\x00\x01")
    (tmp_path / "link").symlink_to("/etc/passwd")
    (tmp_path / "dirlink").symlink_to("/etc", target_is_directory=True)
    zipped = tmp_path.parent / f"{tmp_path.name}.zip"
    size = pack_directory(tmp_path, zipped)
    assert size == zipped.stat().st_size
    assert sorted(check_bundle(zipped)) == ["result.txt", "sub/more.bin"]
    with zipfile.ZipFile(zipped) as archive:
        assert archive.read("result.txt") == b"42\n"


def test_pack_empty_directory_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert pack_directory(tmp_path / "empty", tmp_path / "out.zip") == 0
    assert not (tmp_path / "out.zip").exists()


def test_pack_over_the_cap_stops_there_and_leaves_no_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "random.bin").write_bytes(os.urandom(17 * MIB))
    small = BundleRules("result", 16 * MIB, 64 * MIB)
    with pytest.raises(InvalidInput, match=r"^task output is larger than 16 MiB$"):
        pack_directory(tmp_path / "data", tmp_path / "out.zip", small)
    assert not (tmp_path / "out.zip").exists()


def test_a_large_file_is_packed_streaming_and_read_back(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    payload = os.urandom(3 * MIB)
    with (tmp_path / "data" / "big.bin").open("wb") as sink:
        for _ in range(8):
            sink.write(payload)
    zipped = tmp_path / "out.zip"
    pack_directory(tmp_path / "data", zipped)
    unpack_bundle(zipped, tmp_path / "back", RESULT_RULES)
    assert (tmp_path / "back" / "big.bin").read_bytes() == payload * 8
    assert unpacked_size(zipped, RESULT_RULES) == 24 * MIB


def test_bundle_from_path(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "main.py").write_text("print(1)\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert check_bundle(bundle_from_path(source, scratch)) == ["main.py"]
    assert (scratch / "bundle.zip").exists()
    archive = tmp_path / "b.zip"
    archive.write_bytes(zip_of({"app.py": b""}, zipfile.ZIP_DEFLATED))
    assert bundle_from_path(archive, scratch) == archive
    evil = tmp_path / "evil.zip"
    evil.write_bytes(zip_of({"../x": b""}, zipfile.ZIP_DEFLATED))
    with pytest.raises(InvalidInput, match="escapes the bundle"):
        bundle_from_path(evil, scratch)
    with pytest.raises(NotFound, match="does not exist"):
        bundle_from_path(tmp_path / "missing", scratch)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(InvalidInput, match=r"neither a directory nor a \.zip file"):
        bundle_from_path(tmp_path / "notes.txt", scratch)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="has no files"):
        bundle_from_path(tmp_path / "empty", tmp_path / "empty")


@pytest.mark.parametrize(
    ("names", "command"),
    [
        (["main.py", "app.py"], ["python", "/work/main.py"]),
        (["lib/x.py", "run.py", "start.py"], ["python", "/work/run.py"]),
        (["start.py"], ["python", "/work/start.py"]),
        (["sub/main.py", "README"], None),
        ([], None),
    ],
)
def test_default_command(names: list[str], command: list[str] | None) -> None:
    assert default_command(names) == command


def test_too_many_entries_are_refused_from_the_end_record_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zipfile would read the whole directory into memory and make an object per entry
    # (a 137 MiB zip of 300k empty files took 306 MiB) before the count was checked.
    path = tmp_path / "many.zip"
    path.write_bytes(zip_of({f"f{i}": b"" for i in range(MAX_FILES + 1)}))

    def no_directory_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the central directory was read")

    monkeypatch.setattr(zipfile, "ZipFile", no_directory_read)
    with pytest.raises(InvalidInput, match=f"^bundle has more than {MAX_FILES} files$"):
        check_bundle(path)
