"""The task commands both CLIs share (client/poolcli.py), over an in-memory ``TaskClient``."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from hivemind_cluster.client import poolcli as cli
from hivemind_cluster.client import transfer, views
from hivemind_cluster.client.cli import build_hivemind_parser
from hivemind_cluster.client.transfer import ResultStream, UploadState
from hivemind_cluster.client.views import View
from hivemind_cluster.core.errors import (
    Conflict,
    HiveMindError,
    InvalidInput,
    NotFound,
    TooLarge,
)
from hivemind_cluster.model.blobs import OnBytes
from hivemind_cluster.model.submission import from_json
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.scratch import zip_of
from tests.unit.test_transfer import MemoryHub, sha


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest cache of these tests' own (``XDG_CACHE_HOME``), and no retry pauses."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(transfer, "RETRY_PAUSE", 0)


def task(status: str, **fields: Any) -> View:
    return views.task_view(
        pb.Task(
            id="t1",
            status=status,
            attempt=1,
            max_attempts=3,
            image="hivemind/busybox:latest",
            command=["sh", "-c", "echo hi"],
            node_name="worker-a" if status != "queued" else "",
            node_id="n1" if status != "queued" else "",
            **fields,
        )
    )


@dataclass
class FakeClient:
    """Plays a task through ``states``, one per ``get``; its blobs are a ``MemoryHub``'s,
    ``output`` the task's result zip."""

    states: list[str] = field(default_factory=lambda: ["queued", "running", "succeeded"])
    submitted: list[View] = field(default_factory=list)
    output: bytes = b""
    hub: MemoryHub = field(default_factory=MemoryHub)

    def submit(self, body: View) -> View:
        self.submitted.append(body)
        return task("queued")

    def get(self, task_id: str) -> View:
        if task_id != "t1":
            raise NotFound(f"no task {task_id}")
        status = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return task(
            status,
            exit_code=0 if status == "succeeded" else 3,
            has_exit_code=True,
            output_digest=sha(self.output) if self.output else "",
            output_bytes=len(self.output),
        )

    def cancel(self, task_id: str) -> View:
        return task("cancelled")

    def tasks(self, statuses: list[str], limit: int) -> list[View]:
        return [task(s) for s in statuses][:limit]

    def logs(self, task_id: str, follow: bool) -> Iterator[View]:
        for stream, data in (("stdout", b"out\n"), ("stderr", b"err\n"), ("system", b"ended")):
            yield views.log_view(pb.LogEntry(stream=stream, data=data, attempt=1, time=1.0))

    def begin_upload(self, digest: str, size: int) -> UploadState:
        return self.hub.begin_upload(digest, size)

    def send_upload(
        self, upload_id: str, offset: int, source: BinaryIO, length: int, on_bytes: OnBytes
    ) -> UploadState:
        return self.hub.send_upload(upload_id, offset, source, length, on_bytes)

    def read_result(self, task_id: str, offset: int, digest: str) -> ResultStream:
        self.hub.results[task_id] = self.output
        return self.hub.read_result(task_id, offset, digest)

    def nodes(self) -> list[View]:
        return [views.node_view(pb.NodeState(id="n1", name="worker-a", role="worker"))]

    def balance(self, account: str) -> View:
        return views.balance_view(pb.AccountBalance(account="user:alice", balance=149_250_000))

    def history(self, account: str, limit: int) -> list[View]:
        entry = pb.LedgerEntry(id="e1", source="user:alice", target="escrow", amount=1_500_000)
        return [views.entry_view(entry)]

    def tip(self, project: str, amount_micro: int) -> View:
        entry = pb.LedgerEntry(source="user:alice", target=project, amount=amount_micro)
        return views.entry_view(entry)

    def rates(self) -> View:
        return views.rates_view(pb.RateCard(cpu_second=100, gb_second=50, gpu_second=2000))


def ended(output: bytes) -> FakeClient:
    """A client of a task that succeeded with ``output``."""
    return FakeClient(["succeeded"], output=output)


def parse(*argv: str) -> argparse.Namespace:
    return build_hivemind_parser().parse_args(list(argv))


def run(client: FakeClient, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.run_command(parse(*argv), client)
    out, err = capsys.readouterr()
    return status, out, err


def test_the_submit_body_is_what_the_api_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "main.py").write_text("print('hi')\n")
    (tmp_path / "data.bin").write_bytes(b"data")
    client = FakeClient()
    assert run(
        client, capsys,
        "submit", "--image", "img", "--cpu", "0.5", "--memory", "64M", "--gpus", "1",
        "--timeout", "30", "--max-cost", "2.5", "--env", "A=1=2", "--name", "n",
        "--bundle", str(tmp_path / "job"), "--input", str(tmp_path / "data.bin"),
        "--input-url", f"https://x.example/t.csv#sha256={'0' * 64}",
        "--", "python", "main.py", "--flag",
    ) == (0, "t1\n", "")  # fmt: skip
    body = client.submitted[0]
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(client.hub.blobs[body.pop("bundle")])
    assert zipfile.ZipFile(bundle).namelist() == ["main.py"]
    data = {"name": "data.bin", "digest": sha(b"data"), "kind": "file"}
    url = {"name": "t.csv", "url": f"https://x.example/t.csv#sha256={'0' * 64}"}
    assert body == {
        "image": "img",
        "env": {"A": "1=2"},
        "cpu": "0.5",
        "memory": "64M",
        "gpus": 1,
        "timeout": 30,
        "name": "n",
        "max_cost": "2.5",
        "command": ["python", "main.py", "--flag"],
        "inputs": [data, url],
    }
    body["bundle"] = sha(bundle.read_bytes())
    request = from_json(body)  # the API's (and hivemind-pool's) reading of it
    assert (request.resources.cpu_millis, request.resources.memory_bytes) == (500, 64 << 20)
    assert (request.max_cost, request.bundle_digest, request.env["A"]) == (
        2_500_000,
        body["bundle"],
        "1=2",
    )
    assert [(i.name, i.digest, i.url) for i in request.inputs] == [
        ("data.bin", sha(b"data"), ""),
        ("t.csv", f"sha256:{'0' * 64}", "https://x.example/t.csv"),
    ]


def test_defaults_are_left_to_the_hub() -> None:
    assert cli.submit_body(parse("submit", "--", "true")) == {"command": ["true"]}
    assert cli.submit_body(parse("submit", "--priority", "0")) == {"command": []}


def test_bad_submit_options_are_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    (tmp_path / "data").write_bytes(b"x")
    client = FakeClient()
    with pytest.raises(InvalidInput, match="--env 'A' is not KEY=VALUE"):
        run(client, capsys, "submit", "--env", "A", "--input", str(tmp_path / "data"), "--", "t")
    with pytest.raises(NotFound):
        run(client, capsys, "submit", "--bundle", str(tmp_path / "missing"), "--", "true")
    with pytest.raises(InvalidInput, match="not a zip"):
        run(client, capsys, "submit", "--bundle", str(tmp_path / "bad.zip"), "--", "true")
    with pytest.raises(InvalidInput, match="URL#sha256=HEX"):
        args = ("--input", str(tmp_path / "data"), "--input-url", "https://x.example/a")
        run(client, capsys, "submit", *args, "--", "true")
    assert (client.hub.calls, client.submitted) == ([], [])


def test_submit_says_what_it_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data.bin").write_bytes(b"some data")
    client = FakeClient()
    argv = ("submit", "--input", str(tmp_path / "data.bin"), "--", "true")
    out = run(client, capsys, "submit", "--json", *argv[1:])[1]
    uploads = [{"name": "data.bin", "digest": sha(b"some data"), "size": 9, "sent_bytes": 9}]
    assert json.loads(out)["uploads"] == uploads
    assert run(client, capsys, *argv) == (
        0,
        "t1\n",
        "input data.bin: already on the hub (9 B), nothing sent\n",
    )
    _, out, err = run(client, capsys, "submit", "--json", *argv[1:])
    assert json.loads(out)["uploads"] == [uploads[0] | {"sent_bytes": 0}] and err == ""


def test_progress_bars_only_on_a_terminal_and_never_with_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data.bin").write_bytes(os.urandom(3 << 20))
    argv = ("submit", "--input", str(tmp_path / "data.bin"), "--", "true")
    assert run(FakeClient(), capsys, *argv)[2] == ""  # no terminal: no bar
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert run(FakeClient(), capsys, "submit", "--json", *argv[1:])[2] == ""
    (tmp_path / "cache").rename(tmp_path / "old-cache")  # hash it again
    err = run(FakeClient(), capsys, *argv)[2]
    assert "hashing input data.bin" in err and "100%" in err and "3.00M" in err


def test_submit_prints_the_id_or_the_task(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert run(client, capsys, "submit", "--", "true") == (0, "t1\n", "")
    status, out, _ = run(client, capsys, "submit", "--json", "--", "true")
    assert status == 0 and json.loads(out)["status"] == "queued"


@pytest.mark.parametrize(("final", "exit_status"), [("succeeded", 0), ("failed", 1)])
def test_wait_exits_non_zero_unless_the_task_succeeded(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    final: str,
    exit_status: int,
) -> None:
    monkeypatch.setattr(cli, "POLL_SECONDS", 0)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    status, out, err = run(FakeClient(["queued", "running", final]), capsys, "wait", "t1")
    assert status == exit_status
    assert out.startswith("task      t1\n") and f"status    {final}, exit code" in out
    progress = [line.split("] ", 1)[1] for line in err.splitlines()]
    assert progress == [
        "t1 queued (attempt 1)",
        "t1 running (attempt 1) on worker-a",
        f"t1 {final} (attempt 1) on worker-a",
    ]


def test_wait_is_quiet_with_json_or_without_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "POLL_SECONDS", 0)
    status, out, err = run(FakeClient(), capsys, "submit", "--wait", "--json", "--", "true")
    assert (status, json.loads(out)["status"], err) == (0, "succeeded", "")


def test_wait_gives_up_after_its_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(HiveMindError, match=r"^task t1 is still queued after 0\.01s$"):
        run(FakeClient(["queued"]), capsys, "wait", "t1", "--timeout", "0.01")


def test_logs_go_to_their_streams(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FakeClient(), capsys, "logs", "t1") == (0, "out\n", "err\n--- ended\n")
    _, out, _ = run(FakeClient(), capsys, "logs", "t1", "--json")
    assert json.loads(out.split("\n}\n")[0] + "}")["data"] == "out\n"


def test_result_unpacks_into_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = ended(zip_of({"x": b"hi\n", "sub/y": b"there"}))
    target = tmp_path / "results"
    assert run(client, capsys, "result", "t1", "-o", str(target)) == (
        0,
        f"2 files from t1 in {target}\n",
        "",
    )
    assert (target / "x").read_bytes() == b"hi\n" and (target / "sub" / "y").exists()
    assert sorted(p.name for p in target.iterdir()) == ["sub", "x"]  # the part is gone
    empty = run(ended(b""), capsys, "result", "t1", "-o", str(tmp_path / "e"), "--json")
    assert json.loads(empty[1])["files"] == [] and not (tmp_path / "e").exists()


def test_result_resumes_a_part_from_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = zip_of({"big": os.urandom(3 << 20)})
    client = ended(output)
    target = tmp_path / "results"
    target.mkdir()
    (target / ".hivemind-result-t1.zip.part").write_bytes(output[:1234567])
    assert run(client, capsys, "result", "t1", "-o", str(target))[0] == 0
    assert client.hub.calls == ["read 1234567"]
    assert sorted(p.name for p in target.iterdir()) == ["big"]


def test_result_can_keep_the_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = zip_of({"x": b"hi\n"})
    kept = tmp_path / "out" / "r.zip"
    status, out, _ = run(ended(output), capsys, "result", "t1", "--zip", str(kept))
    assert (status, out, kept.read_bytes()) == (0, f"1 files from t1 in {kept}\n", output)
    assert sorted(p.name for p in kept.parent.iterdir()) == ["r.zip"]
    with pytest.raises(InvalidInput, match="exists: give --zip a new file"):
        run(ended(output), capsys, "result", "t1", "--zip", str(kept))
    with pytest.raises(SystemExit):
        parse("result", "t1")  # -o or --zip


def test_result_of_a_task_still_running_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Conflict, match=r"^task t1 is running: no result yet$"):
        run(FakeClient(["running"]), capsys, "result", "t1", "-o", str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_result_files_follow_the_users_umask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = ended(zip_of({"sub/y": b"there"}))
    previous = os.umask(0o077)
    try:
        run(client, capsys, "result", "t1", "-o", str(tmp_path / "r"))
    finally:
        os.umask(previous)
    modes = [
        stat.S_IMODE(path.stat().st_mode)
        for path in (tmp_path / "r" / "sub", tmp_path / "r" / "sub" / "y")
    ]
    assert modes == [0o700, 0o600]


def test_result_never_writes_over_files_and_is_all_or_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = ended(zip_of({"x": b"new", "z": b"also new"}))
    target = tmp_path / "results"
    target.mkdir()
    (target / "x").write_bytes(b"mine")
    with pytest.raises(InvalidInput, match="already has 'x'"):
        run(client, capsys, "result", "t1", "-o", str(target))
    assert sorted(p.name for p in target.iterdir()) == ["x"]  # nothing moved in, no leftovers
    assert (target / "x").read_bytes() == b"mine"
    (tmp_path / "a-file").write_text("")
    with pytest.raises(HiveMindError, match="cannot write the result to"):
        run(client, capsys, "result", "t1", "-o", str(tmp_path / "a-file"))


def test_limits_and_timeouts_are_checked_before_any_call() -> None:
    for argv in (
        ("list", "--limit", "0"),
        ("history", "--limit", "1099511627776"),
        ("wait", "t1", "--timeout", "nan"),
        ("wait", "t1", "--timeout", "-1"),
    ):
        with pytest.raises(SystemExit):
            parse(*argv)


def test_tables_and_their_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(FakeClient(), capsys, "list", "--status", "running")
    assert status == 0 and out.splitlines()[0].split() == [c.upper() for c in views.TASK_COLUMNS]
    assert "t1  running" in out
    _, out, _ = run(FakeClient(), capsys, "nodes", "--json")
    assert json.loads(out)[0]["name"] == "worker-a"
    _, out, _ = run(FakeClient(), capsys, "history")
    assert out.splitlines()[1].split() == ["e1", "user:alice", "escrow", "1.5"]


def test_ledger_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FakeClient(), capsys, "balance")[1] == "149.25 CPT (user:alice)\n"
    _, out, _ = run(FakeClient(), capsys, "balance", "--json")
    assert json.loads(out)["balance"] == 149.25
    assert run(FakeClient(), capsys, "tip", "project:x", "2.5")[1] == (
        "tipped 2.5 CPT to project:x\n"
    )
    assert "cpu_second          0.0001 CPT" in run(FakeClient(), capsys, "rates")[1]
    with pytest.raises(InvalidInput, match="not a number of CPT"):
        run(FakeClient(), capsys, "tip", "project:x", "lots")


def test_status_and_cancel(capsys: pytest.CaptureFixture[str]) -> None:
    assert "status    queued" in run(FakeClient(), capsys, "status", "t1")[1]
    assert json.loads(run(FakeClient(), capsys, "cancel", "t1", "--json")[1])["status"] == (
        "cancelled"
    )
    with pytest.raises(NotFound, match="no task nope"):
        run(FakeClient(), capsys, "status", "nope")


def test_hivemind_pool_offers_other_accounts_and_hivemind_does_not() -> None:
    common = argparse.ArgumentParser(add_help=False)
    parser, _ = cli.build_parser("hivemind-pool", "", common, True)
    assert parser.parse_args(["balance", "--account", "node:x"]).account == "node:x"
    assert parse("balance").account == ""
    with pytest.raises(SystemExit):
        parse("balance", "--account", "node:x")


def test_a_reader_that_goes_away_ends_quietly() -> None:
    script = (
        "from hivemind_cluster.core.console import run_main\n"
        "def main(argv):\n"
        "    for i in range(10**6):\n"
        "        print('line', i)\n"
        "    return 0\n"
        "raise SystemExit(run_main(main))\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert writer.stdout is not None
    assert writer.stdout.read(7) == b"line 0\n"  # then, like `| head -1`, stop reading
    writer.stdout.close()
    _, err = writer.communicate(timeout=60)
    assert (writer.returncode, err) == (141, b"")


def free_space(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    """Every disk has ``free`` bytes free (as ``shutil.disk_usage`` tells)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(free, 0, free))


def test_a_result_that_would_fill_the_disk_is_not_unpacked_and_its_zip_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros", bytes(3 << 20))
        archive.writestr("more", bytes(1 << 20))
    output = buffer.getvalue()  # 4 MiB unpacked, a few KiB zipped
    client = ended(output)
    target = tmp_path / "results"
    free_space(monkeypatch, len(output) + 1000)
    part = target / ".hivemind-result-t1.zip.part"
    message = (
        rf"^unpacking the result needs 4 MiB but {target} has [\d.]+ KiB free: free some space "
        rf"or give another directory, or keep the zip with --zip FILE \(downloaded: {part}\)$"
    )
    with pytest.raises(TooLarge, match=message):
        run(client, capsys, "result", "t1", "-o", str(target))
    assert [p.name for p in target.iterdir()] == [part.name]  # nothing unpacked
    client.hub.calls = []
    kept = target / "r.zip"
    assert run(client, capsys, "result", "t1", "--zip", str(kept))[0] == 0
    assert kept.read_bytes() == output and client.hub.calls == []  # the part, not again


def test_a_result_zip_larger_than_the_free_space_is_not_downloaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    output = zip_of({"data": os.urandom(2 << 20)})
    client = ended(output)
    target = tmp_path / "results"
    free_space(monkeypatch, 1 << 20)
    message = rf"^the result zip of t1 needs 2 MiB but {target} has 1 MiB free: free some"
    with pytest.raises(TooLarge, match=message):
        run(client, capsys, "result", "t1", "--zip", str(target / "r.zip"))
    assert list(target.iterdir()) == [] and client.hub.calls == []


def test_result_bars_only_on_a_terminal_and_never_with_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    output = zip_of({"data": os.urandom(3 << 20)})
    assert run(ended(output), capsys, "result", "t1", "-o", str(tmp_path / "a"))[2] == ""
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    argv = ("result", "t1", "--json", "-o", str(tmp_path / "b"))
    assert run(ended(output), capsys, *argv)[2] == ""
    err = run(ended(output), capsys, "result", "t1", "-o", str(tmp_path / "c"))[2]
    assert "result of t1" in err and "100%" in err and "3.00M" in err
