"""Results follow one rule set on every side: the worker packs under it, the pool accepts
under it, the owner's CLI unpacks under it.

A highly compressible result passes all three (no compression ratio for results; an input
bundle is still refused for one). Hostile zips are still refused by the consumer
(``save_result``, what ``hivemind result`` and ``hivemind-pool result`` run) and by the pool,
and a zip whose headers lie is caught while it is unpacked, by the bytes written.
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from hivemind_cluster.client.results import save_result
from hivemind_cluster.core.errors import InvalidInput
from hivemind_cluster.core.units import MIB
from hivemind_cluster.model.bundles import (
    MAX_FILES,
    RESULT_RULES,
    BundleRules,
    check_bundle,
    pack_directory,
)
from hivemind_cluster.pool.taskdata import TaskBlobs
from tests.support.scratch import zip_of
from tests.unit.test_bundles import lying_zip

# A result limit small enough to test without writing gigabytes.
SMALL = BundleRules("result", 16 * MIB, 1024 * MIB)


def accepted_by_the_pool(bundle: Path) -> None:
    """What the pool checks of a result's zip once its blob is stored (pool/taskdata.py)."""
    TaskBlobs.check_result_zip(bundle)


def written(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "result.zip"
    path.write_bytes(data)
    return path


def symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("passwd")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def test_a_compressible_result_is_packed_accepted_and_unpacked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "zeros").write_bytes(bytes(20 * MIB))  # deflates about 1000:1
    bundle = tmp_path / "result.zip"
    assert pack_directory(out, bundle) < MIB
    accepted_by_the_pool(bundle)
    assert save_result(bundle, tmp_path / "results") == ["zeros"]
    assert (tmp_path / "results" / "zeros").read_bytes() == bytes(20 * MIB)
    # An input bundle from a user is still refused for the same ratio.
    with pytest.raises(InvalidInput, match=r"compressed more than 200:1 \(zip bomb\?\)"):
        check_bundle(bundle)


def test_the_worker_says_how_much_a_result_over_the_limit_holds(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with (tmp_path / "out" / "sparse").open("wb") as sparse:
        sparse.truncate(3 * 1024 * MIB)  # 3 GiB to read, nothing on disk
    with pytest.raises(InvalidInput) as refused:
        pack_directory(tmp_path / "out", tmp_path / "result.zip", SMALL)
    assert refused.value.message == (
        "task output holds 3 GiB unpacked, more than the 1 GiB a result may hold"
    )
    assert not (tmp_path / "result.zip").exists()


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        (zip_of({"ok": b"fine", "../escape": b"evil"}), r"'../escape' escapes the bundle"),
        (zip_of({"/etc/cron.d/x": b"evil"}), "is an absolute path"),
        (symlink_zip(), "'passwd' is a symbolic link"),
        (lying_zip(b"tiny", declared_size=2048 * MIB), r"^result unpacks to more than 1 GiB"),
        (
            zip_of({f"f{i}": b"" for i in range(MAX_FILES + 1)}),
            "^result has more than 10000 files$",
        ),
        (b"PK\x03\x04" + bytes(100), "^result is not a zip file$"),
        (bytes(16 * MIB + 1), "^result is larger than 16 MiB$"),
    ],
    ids=["zip-slip", "absolute", "symlink", "declared-too-big", "too-many-files", "junk", "huge"],
)
def test_hostile_results_are_refused_by_the_pool_and_the_consumer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle: bytes, message: str
) -> None:
    for side in ("pool.taskdata", "client.results"):
        monkeypatch.setattr(f"hivemind_cluster.{side}.RESULT_RULES", SMALL)
    path = written(tmp_path, bundle)
    with pytest.raises(InvalidInput, match=message):
        accepted_by_the_pool(path)
    target = tmp_path / "results"
    with pytest.raises(InvalidInput, match=message):
        save_result(path, target)
    assert not target.exists() or list(target.iterdir()) == []


def test_headers_that_lie_are_caught_while_unpacking(tmp_path: Path) -> None:
    bundle = written(tmp_path, lying_zip(bytes(2 * MIB), declared_size=1000))
    accepted_by_the_pool(bundle)  # the headers alone look harmless
    target = tmp_path / "results"
    with pytest.raises(InvalidInput, match=r"bundle entry 'big' is corrupt|unpacks to more than"):
        save_result(bundle, target)
    assert list(target.iterdir()) == []  # nothing kept, not even the staging directory


def test_the_consumer_counts_the_bytes_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even with the checks before unpacking fooled, unpacking stops at the unpacked limit.
    small = replace(RESULT_RULES, max_unpacked_bytes=MIB + 10)
    monkeypatch.setattr("hivemind_cluster.client.results.RESULT_RULES", small)
    monkeypatch.setattr("hivemind_cluster.model.bundles.checked_members", lambda a, r: a.infolist())
    monkeypatch.setattr("hivemind_cluster.client.results.check_bundle", lambda d, r: ["a", "b"])
    bundle = zip_of({"a": bytes(MIB), "b": bytes(MIB)}, zipfile.ZIP_DEFLATED)
    target = tmp_path / "results"
    with pytest.raises(InvalidInput, match=r"^result unpacks to more than 1048586 bytes"):
        save_result(bundle, target)
    assert list(target.iterdir()) == []
