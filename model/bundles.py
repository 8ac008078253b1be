"""Zip bundles: task inputs (``--bundle DIR|ZIP``, unpacked at ``/work``) and outputs (``/out``).

Every bundle from outside is checked before anything is written: size, file count, paths that
would escape the destination (zip-slip), symbolic links, and zip bombs (declared size and
per-member compression ratio). Unpacking then counts the bytes it actually writes, so a zip
whose headers lie cannot get past the limits either.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from hivemind_cluster.core.errors import InvalidInput, NotFound, TooLarge
from hivemind_cluster.core.units import MIB, format_bytes

MAX_INPUT_BYTES = 16 * MIB
MAX_UNPACKED_BYTES = 256 * MIB
MAX_FILES = 10_000
MAX_OUTPUT_BYTES = 16 * MIB
# A member that inflates more than this, and to more than BOMB_MIN_BYTES, is a zip bomb.
MAX_COMPRESSION_RATIO = 200
BOMB_MIN_BYTES = 1 * MIB
CHUNK = 256 * 1024
# What reading a member whose data does not match its headers raises.
CORRUPT_MEMBER = (zipfile.BadZipFile, NotImplementedError, EOFError)
# Bundles unpacked for a task container (another uid) stay world-readable.
TASK_UMASK = 0o022

# A bundle with no command runs the first of these at its top level, else its first *.py
# there in sorted order: the original worker's order, which its own sample bundles rely on.
DEFAULT_ENTRYPOINTS = ("main.py", "task_script.py", "run.py", "app.py", "script.py", "start.py")
# What that default command runs with: output as it is written (``python -u``), and the
# bundle importable from wherever the entry point sits.
PYTHON_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": "/work"}

_SEPARATORS = re.compile(r"[/\\]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def shown(limit: int) -> str:
    """A limit in an error message: exact, never rounded."""
    return format_bytes(limit, exact=True)


def path_parts(name: str) -> list[str]:
    """The components of a member name, refusing anything that could land outside the bundle."""
    if not name:
        raise InvalidInput("bundle has an entry with an empty name")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise InvalidInput(f"bundle entry {name!r} is an absolute path")
    parts = [part for part in _SEPARATORS.split(name) if part not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(f"bundle entry {name!r} escapes the bundle")
    return parts


def check_member(info: zipfile.ZipInfo) -> None:
    path_parts(info.filename)
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        raise InvalidInput(f"bundle entry {info.filename!r} is a symbolic link")
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidInput(f"bundle entry {info.filename!r} is not a regular file")
    if info.flag_bits & 0x1:
        raise InvalidInput(f"bundle entry {info.filename!r} is encrypted")
    if info.file_size > BOMB_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(
        info.compress_size, 1
    ):
        raise InvalidInput(
            f"bundle entry {info.filename!r} is compressed more than "
            f"{MAX_COMPRESSION_RATIO}:1 (zip bomb?)"
        )


def open_zip(data: bytes) -> zipfile.ZipFile:
    if len(data) > MAX_INPUT_BYTES:
        raise TooLarge(f"bundle is larger than {shown(MAX_INPUT_BYTES)}")
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError):
        raise InvalidInput("bundle is not a zip file") from None


def checked_members(archive: zipfile.ZipFile, max_unpacked: int) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > MAX_FILES:
        raise InvalidInput(f"bundle has more than {MAX_FILES} files")
    for info in members:
        check_member(info)
    if sum(info.file_size for info in members) > max_unpacked:
        raise InvalidInput(f"bundle unpacks to more than {shown(max_unpacked)} (zip bomb?)")
    return members


def check_bundle(data: bytes, max_unpacked: int = MAX_UNPACKED_BYTES) -> list[str]:
    """Validate a zip bundle without unpacking it; return its member names."""
    with open_zip(data) as archive:
        return [info.filename for info in checked_members(archive, max_unpacked)]


def unpack_bundle(
    data: bytes, dest: Path, max_unpacked: int = MAX_UNPACKED_BYTES, umask: int = TASK_UMASK
) -> None:
    """Check the bundle, then extract it under ``dest`` (regular files and directories only).

    Modes are 0o777 for directories and executables, 0o666 for other files, less ``umask``
    whatever the process's own umask is: the default leaves them world-readable, as task
    containers (another uid) need. On an error, what was already written stays in ``dest``;
    callers unpack into a fresh directory they remove anyway.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with open_zip(data) as archive:
        budget = max_unpacked
        for info in checked_members(archive, max_unpacked):
            target = dest.joinpath(*path_parts(info.filename))
            try:
                if info.is_dir():
                    make_directories(dest, target, umask)
                    continue
                make_directories(dest, target.parent, umask)
                executable = bool((info.external_attr >> 16) & 0o111)
                mode = (0o777 if executable else 0o666) & ~umask
                with archive.open(info) as source, open_new_file(target, mode) as sink:
                    budget = copy_within(source, sink, budget, max_unpacked)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                raise InvalidInput(
                    f"bundle entry {info.filename!r} clashes with another entry"
                ) from None
            except CORRUPT_MEMBER as error:
                raise corrupt(info, error) from None


def corrupt(info: zipfile.ZipInfo, error: Exception) -> InvalidInput:
    return InvalidInput(f"bundle entry {info.filename!r} is corrupt ({error})")


def make_directories(dest: Path, directory: Path, umask: int) -> None:
    """Create ``directory`` (under ``dest``) and its parents, mode 0o777 less ``umask``."""
    path = dest
    for part in directory.relative_to(dest).parts:
        path = path / part
        if not path.is_dir():
            path.mkdir()
            path.chmod(0o777 & ~umask)


def open_new_file(path: Path, mode: int) -> IO[bytes]:
    """A new file with exactly ``mode``; never an existing file or a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    descriptor = os.open(path, flags, 0o600)
    os.fchmod(descriptor, mode)
    return os.fdopen(descriptor, "wb")


def current_umask() -> int:
    """This process's umask (set and restored at once: call it from single-threaded code)."""
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def copy_within(source: IO[bytes], sink: IO[bytes], budget: int, max_unpacked: int) -> int:
    """Copy, counting real bytes against ``budget``; return what is left of it."""
    while chunk := source.read(CHUNK):
        budget -= len(chunk)
        if budget < 0:
            raise InvalidInput(f"bundle unpacks to more than {shown(max_unpacked)} (zip bomb?)")
        sink.write(chunk)
    return budget


def regular_files(directory: Path) -> Iterator[tuple[Path, str]]:
    """(path, name relative to directory) for every regular file; symlinks are not followed."""
    for root, dirs, files in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if stat.S_ISREG(path.lstat().st_mode):
                yield path, path.relative_to(directory).as_posix()


def pack_directory(
    directory: Path, limit: int = MAX_OUTPUT_BYTES, what: str = "task output"
) -> bytes:
    """Zip the regular files under ``directory`` (b"" when there are none).

    Refuses (InvalidInput) a result over ``limit`` compressed bytes, or one that
    ``check_bundle`` would refuse for its file count or unpacked size.
    """
    return pack_files(regular_files(directory), limit, what)


def pack_files(
    files: Iterable[tuple[Path, str]], limit: int = MAX_OUTPUT_BYTES, what: str = "task output"
) -> bytes:
    """Zip (path, name) pairs, as ``pack_directory`` does a directory's files."""
    buffer = io.BytesIO()
    count = unpacked = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in files:
            count += 1
            if count > MAX_FILES:
                raise InvalidInput(f"{what} has more than {MAX_FILES} files")
            info = zipfile.ZipInfo.from_file(path, name)
            info.compress_type = zipfile.ZIP_DEFLATED
            flags = os.O_RDONLY | os.O_NOFOLLOW
            with os.fdopen(os.open(path, flags), "rb") as source, archive.open(info, "w") as sink:
                while chunk := source.read(CHUNK):
                    unpacked += len(chunk)
                    if unpacked > MAX_UNPACKED_BYTES:
                        raise InvalidInput(
                            f"{what} unpacks to more than {shown(MAX_UNPACKED_BYTES)}"
                        )
                    sink.write(chunk)
                    if buffer.tell() > limit:
                        raise InvalidInput(f"{what} is larger than {shown(limit)}")
    if count == 0:
        return b""
    if buffer.tell() > limit:
        raise InvalidInput(f"{what} is larger than {shown(limit)}")
    return buffer.getvalue()


def bundle_from_path(path: Path) -> bytes:
    """The bundle for ``--bundle DIR|ZIP``: a directory is zipped, a .zip file is checked."""
    if path.is_dir():
        data = pack_directory(path, MAX_INPUT_BYTES, what=f"bundle directory {str(path)!r}")
        if not data:
            raise InvalidInput(f"bundle directory {str(path)!r} has no files")
    elif is_bundle_path(path):
        if path.stat().st_size > MAX_INPUT_BYTES:
            raise InvalidInput(f"bundle is larger than {shown(MAX_INPUT_BYTES)}")
        data = path.read_bytes()
    elif not path.exists():
        raise NotFound(f"bundle {str(path)!r} does not exist")
    else:
        raise InvalidInput(f"bundle {str(path)!r} is neither a directory nor a .zip file")
    check_bundle(data)
    return data


def is_bundle_path(path: Path) -> bool:
    """A directory or a .zip file: what ``--bundle`` takes."""
    return path.is_dir() or (path.is_file() and path.suffix.lower() == ".zip")


def member_path(name: str) -> str:
    """A member name as one path: ``./lib\\util.py`` is ``lib/util.py``."""
    return "/".join(path_parts(name))


def file_paths(names: list[str]) -> list[str]:
    """The bundle's files (no directories) as ``member_path`` spells them, in its order."""
    return [member_path(name) for name in names if not name.endswith("/")]


def default_entrypoint(names: list[str]) -> str | None:
    """The file a bundle with no command runs: the first DEFAULT_ENTRYPOINTS file at its
    top level, else the first top-level ``*.py`` in sorted order, else None."""
    top_level = {path for path in file_paths(names) if "/" not in path}
    for entrypoint in DEFAULT_ENTRYPOINTS:
        if entrypoint in top_level:
            return entrypoint
    return min((path for path in top_level if path.endswith(".py")), default=None)


def python_command(entrypoint: str) -> list[str]:
    """How an entry point runs: ``python /work/<entrypoint>`` (with PYTHON_ENV)."""
    return ["python", f"/work/{entrypoint}"]


def default_command(names: list[str]) -> list[str] | None:
    """``python_command`` of the bundle's ``default_entrypoint``, if it has one."""
    entrypoint = default_entrypoint(names)
    return python_command(entrypoint) if entrypoint else None


def read_member(data: bytes, path: str, limit: int) -> bytes | None:
    """The file at ``path`` (as ``member_path`` spells it) in a checked bundle, None if it
    has none; refuses one larger than ``limit`` bytes."""
    with open_zip(data) as archive:
        for info in archive.infolist():
            if info.is_dir() or member_path(info.filename) != path:
                continue
            try:
                with archive.open(info) as source:
                    content = source.read(limit + 1)
            except CORRUPT_MEMBER as error:
                raise corrupt(info, error) from None
            if len(content) > limit:
                raise InvalidInput(f"{path} in the bundle is larger than {shown(limit)}")
            return content
    return None
