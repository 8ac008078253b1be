"""Zip bundles: task inputs (``--bundle DIR|ZIP``, unpacked at ``/work``) and outputs (``/out``).

Every bundle from outside is checked before anything is written: size, file count, paths that
would escape the destination (zip-slip), symbolic links, and zip bombs (declared size, and for
inputs the per-member compression ratio). Unpacking then counts the bytes it actually writes,
so a zip whose headers lie cannot get past the limits either.

What a zip may be is one ``BundleRules`` per kind, applied by every side that touches it: an
input by the CLI that packs it, the pool and web that accept it and the worker that unpacks
it; a result by the worker that packs it (a task whose result breaks them fails, saying why),
the pool that accepts it and the CLI that unpacks it. So a result the platform accepted is
never refused by its owner's CLI.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

from hivemind_cluster.core.errors import InvalidInput, NotFound, TooLarge
from hivemind_cluster.core.units import MIB, format_bytes

# Bundles travel as blobs (model/blobs.py): as large as an input or a result may be (hub
# settings max_input_bytes, max_result_bytes); what they unpack to, as the largest task disk
# (max_task_disk_bytes), which also bounds it physically on the worker.
MAX_INPUT_BYTES = 20 * 1024 * MIB
MAX_UNPACKED_BYTES = 64 * 1024 * MIB
MAX_FILES = 10_000
MAX_OUTPUT_BYTES = 10 * 1024 * MIB
MAX_RESULT_UNPACKED_BYTES = 64 * 1024 * MIB
# A member that inflates more than this, and to more than BOMB_MIN_BYTES, is a zip bomb.
MAX_COMPRESSION_RATIO = 200
BOMB_MIN_BYTES = 1 * MIB
CHUNK = 256 * 1024
# A zip's end record: where zipfile keeps its entry count and directory size, and what one
# entry of the central directory may take (46 bytes, a name, zip64 and other extras).
ENTRIES_TOTAL = zipfile._ECD_ENTRIES_TOTAL  # type: ignore[attr-defined]
DIRECTORY_SIZE = zipfile._ECD_SIZE  # type: ignore[attr-defined]
MAX_ENTRY_BYTES = 1024
# Members this large get zip64 headers up front (they may grow past 4 GiB as they are read).
ZIP64_FROM = 1 << 30
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


@dataclass(frozen=True)
class BundleRules:
    """What one kind of zip may be (zipped) and hold (unpacked), for every side alike.

    ``max_compression_ratio`` guards inputs, which come from anyone: a member inflating more
    than that is refused as a zip bomb. Results have none: a task's zeros compress 1000:1,
    and what bounds a result is its unpacked total, which the worker enforced as it packed.
    """

    name: str  # how messages call the zip: "bundle is larger than 16 MiB"
    max_zip_bytes: int
    max_unpacked_bytes: int
    max_files: int = MAX_FILES
    max_compression_ratio: int | None = None

    def unpacks_too_much(self) -> InvalidInput:
        return InvalidInput(
            f"{self.name} unpacks to more than {shown(self.max_unpacked_bytes)} (zip bomb?)"
        )

    def holds_too_much(self, what: str, size: int | None = None) -> InvalidInput:
        """``what`` (packed here) holds ``size`` bytes, or more than allowed if not known."""
        amount = f"{format_bytes(size)} unpacked, more than" if size else "more than"
        limit = shown(self.max_unpacked_bytes)
        return InvalidInput(f"{what} holds {amount} the {limit} a {self.name} may hold")


# A task's input: from anyone, so zip bombs are refused by their compression ratio too.
INPUT_RULES = BundleRules(
    "bundle", MAX_INPUT_BYTES, MAX_UNPACKED_BYTES, max_compression_ratio=MAX_COMPRESSION_RATIO
)
# A task's result: made by the worker under these rules, accepted and unpacked under them.
RESULT_RULES = BundleRules("result", MAX_OUTPUT_BYTES, MAX_RESULT_UNPACKED_BYTES)

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


def check_member(info: zipfile.ZipInfo, rules: BundleRules) -> None:
    path_parts(info.filename)
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        raise InvalidInput(f"bundle entry {info.filename!r} is a symbolic link")
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidInput(f"bundle entry {info.filename!r} is not a regular file")
    if info.flag_bits & 0x1:
        raise InvalidInput(f"bundle entry {info.filename!r} is encrypted")
    ratio = rules.max_compression_ratio
    if ratio and info.file_size > max(BOMB_MIN_BYTES, ratio * max(info.compress_size, 1)):
        raise InvalidInput(
            f"bundle entry {info.filename!r} is compressed more than {ratio}:1 (zip bomb?)"
        )


# A zip in memory (small ones: tests, task.json checks) or in a file (a blob, a download).
Source = bytes | Path


def open_zip(source: Source, rules: BundleRules = INPUT_RULES) -> zipfile.ZipFile:
    """The zip, read from memory or from its file (only its directory is read here).

    Its end record is read first: ``zipfile`` would load the whole central directory into
    memory and make an object of every entry before anyone counts them, so a zip announcing
    more entries than ``rules`` allow, or a directory larger than they could need, is refused
    from those few bytes.
    """
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    if size > rules.max_zip_bytes:
        raise TooLarge(f"{rules.name} is larger than {shown(rules.max_zip_bytes)}")
    try:
        with io.BytesIO(source) if isinstance(source, bytes) else source.open("rb") as file:
            check_directory(zipfile._EndRecData(file), rules)  # type: ignore[attr-defined]
        return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, TypeError):
        raise InvalidInput(f"{rules.name} is not a zip file") from None


def check_directory(end_record: list[Any] | None, rules: BundleRules) -> None:
    """Refuse a zip whose end record announces too many entries or too large a directory."""
    if end_record is None:
        raise ValueError("no end record")
    entries, directory_bytes = end_record[ENTRIES_TOTAL], end_record[DIRECTORY_SIZE]
    if entries > rules.max_files:
        raise InvalidInput(f"{rules.name} has more than {rules.max_files} files")
    if directory_bytes > rules.max_files * MAX_ENTRY_BYTES:
        raise InvalidInput(f"{rules.name} has a directory larger than its files could need")


def checked_members(archive: zipfile.ZipFile, rules: BundleRules) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > rules.max_files:
        raise InvalidInput(f"{rules.name} has more than {rules.max_files} files")
    for info in members:
        check_member(info, rules)
    if sum(info.file_size for info in members) > rules.max_unpacked_bytes:
        raise rules.unpacks_too_much()
    return members


def check_bundle(source: Source, rules: BundleRules = INPUT_RULES) -> list[str]:
    """Validate a zip bundle without unpacking it; return its member names."""
    with open_zip(source, rules) as archive:
        return [info.filename for info in checked_members(archive, rules)]


def unpacked_size(source: Source, rules: BundleRules = INPUT_RULES) -> int:
    """What the checked bundle declares it unpacks to (unpacking counts the real bytes)."""
    with open_zip(source, rules) as archive:
        return sum(info.file_size for info in checked_members(archive, rules))


def unpack_bundle(
    source: Source, dest: Path, rules: BundleRules = INPUT_RULES, umask: int = TASK_UMASK
) -> None:
    """Check the bundle, then extract it under ``dest`` (regular files and directories only).

    Modes are 0o777 for directories and executables, 0o666 for other files, less ``umask``
    whatever the process's own umask is: the default leaves them world-readable, as task
    containers (another uid) need. On an error, what was already written stays in ``dest``;
    callers unpack into a fresh directory they remove anyway.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with open_zip(source, rules) as archive:
        budget = rules.max_unpacked_bytes
        for info in checked_members(archive, rules):
            target = dest.joinpath(*path_parts(info.filename))
            try:
                if info.is_dir():
                    make_directories(dest, target, umask)
                    continue
                make_directories(dest, target.parent, umask)
                executable = bool((info.external_attr >> 16) & 0o111)
                mode = (0o777 if executable else 0o666) & ~umask
                with archive.open(info) as member, open_new_file(target, mode) as sink:
                    budget = copy_within(member, sink, budget, rules)
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


def copy_within(source: IO[bytes], sink: IO[bytes], budget: int, rules: BundleRules) -> int:
    """Copy, counting real bytes against ``budget``; return what is left of it."""
    while chunk := source.read(CHUNK):
        budget -= len(chunk)
        if budget < 0:
            raise rules.unpacks_too_much()
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
    directory: Path, dest: Path, rules: BundleRules = RESULT_RULES, what: str = "task output"
) -> int:
    """Zip the regular files under ``directory`` into the new file ``dest``; returns its
    size (0, and no file, when there are none).

    Refuses (InvalidInput) what ``rules`` would refuse unpacking it: too many files, more
    unpacked than they allow, or a zip larger than they allow.
    """
    return pack_files(regular_files(directory), dest, rules, what)


def pack_files(
    files: Iterable[tuple[Path, str]],
    dest: Path,
    rules: BundleRules = RESULT_RULES,
    what: str = "task output",
) -> int:
    """Zip (path, name) pairs into the new file ``dest``, as ``pack_directory`` does a
    directory's files, streaming: memory does not grow with their size.

    Their count and total size are checked before anything is read, so the error says how
    much there is; the bytes read are counted too, in case a file grows meanwhile. On an
    error ``dest`` is removed.
    """
    listed = list(islice(files, rules.max_files + 1))
    if len(listed) > rules.max_files:
        raise InvalidInput(f"{what} has more than {rules.max_files} files")
    total = sum(path.lstat().st_size for path, _ in listed)
    if total > rules.max_unpacked_bytes:
        raise rules.holds_too_much(what, total)
    if not listed:
        return 0
    try:
        with open_new_file(dest, 0o600) as sink:
            write_zip(listed, sink, rules, what)
            return sink.tell()
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def write_zip(
    listed: list[tuple[Path, str]], sink: IO[bytes], rules: BundleRules, what: str
) -> None:
    budget = rules.max_unpacked_bytes
    # The fastest deflate: a task's data is often incompressible, and packing must keep
    # pace with the network.
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path, name in listed:
            info = zipfile.ZipInfo.from_file(path, name)
            info.compress_type = zipfile.ZIP_DEFLATED
            flags = os.O_RDONLY | os.O_NOFOLLOW
            large = path.lstat().st_size >= ZIP64_FROM
            with (
                os.fdopen(os.open(path, flags), "rb") as source,
                archive.open(info, "w", force_zip64=large) as member,
            ):
                while chunk := source.read(CHUNK):
                    budget -= len(chunk)
                    if budget < 0:
                        raise rules.holds_too_much(what)
                    member.write(chunk)
                    check_zipped_size(sink, rules, what)
    check_zipped_size(sink, rules, what)


def check_zipped_size(sink: IO[bytes], rules: BundleRules, what: str) -> None:
    if sink.tell() > rules.max_zip_bytes:
        raise InvalidInput(f"{what} is larger than {shown(rules.max_zip_bytes)}")


def bundle_from_path(path: Path, scratch: Path) -> Path:
    """The zip for ``--bundle DIR|ZIP``, checked: a .zip file is itself, a directory is
    zipped into a new file in the directory ``scratch`` (the caller removes it)."""
    if path.is_dir():
        zipped = scratch / "bundle.zip"
        if not pack_directory(path, zipped, INPUT_RULES, what=f"bundle directory {str(path)!r}"):
            raise InvalidInput(f"bundle directory {str(path)!r} has no files")
    elif is_bundle_path(path):
        zipped = path
    elif not path.exists():
        raise NotFound(f"bundle {str(path)!r} does not exist")
    else:
        raise InvalidInput(f"bundle {str(path)!r} is neither a directory nor a .zip file")
    check_bundle(zipped)
    return zipped


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


def read_member(source: Source, path: str, limit: int) -> bytes | None:
    """The file at ``path`` (as ``member_path`` spells it) in a checked bundle, None if it
    has none; refuses one larger than ``limit`` bytes."""
    with open_zip(source) as archive:
        for info in archive.infolist():
            if info.is_dir() or member_path(info.filename) != path:
                continue
            try:
                with archive.open(info) as member:
                    content: bytes = member.read(limit + 1)
            except CORRUPT_MEMBER as error:
                raise corrupt(info, error) from None
            if len(content) > limit:
                raise InvalidInput(f"{path} in the bundle is larger than {shown(limit)}")
            return content
    return None
