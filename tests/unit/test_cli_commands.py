"""The task commands both CLIs share (client/poolcli.py), over an in-memory ``TaskClient``."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hivemind_cluster.client import poolcli as cli
from hivemind_cluster.client import views
from hivemind_cluster.client.cli import build_hivemind_parser
from hivemind_cluster.client.views import View
from hivemind_cluster.core.errors import HiveMindError, InvalidInput, NotFound
from hivemind_cluster.model.submission import from_json
from hivemind_cluster.protos import pool_pb2 as pb
from tests.support.scratch import zip_of


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
    """Plays a task through ``states``, one per ``get``."""

    states: list[str] = field(default_factory=lambda: ["queued", "running", "succeeded"])
    submitted: list[View] = field(default_factory=list)
    output: bytes = b""

    def submit(self, body: View) -> View:
        self.submitted.append(body)
        return task("queued")

    def get(self, task_id: str) -> View:
        if task_id != "t1":
            raise NotFound(f"no task {task_id}")
        status = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return task(status, exit_code=0 if status == "succeeded" else 3, has_exit_code=True)

    def cancel(self, task_id: str) -> View:
        return task("cancelled")

    def tasks(self, statuses: list[str], limit: int) -> list[View]:
        return [task(s) for s in statuses][:limit]

    def logs(self, task_id: str, follow: bool) -> Iterator[View]:
        for stream, data in (("stdout", b"out\n"), ("stderr", b"err\n"), ("system", b"ended")):
            yield views.log_view(pb.LogEntry(stream=stream, data=data, attempt=1, time=1.0))

    def result(self, task_id: str) -> bytes:
        return self.output

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


def parse(*argv: str) -> argparse.Namespace:
    return build_hivemind_parser().parse_args(list(argv))


def run(client: FakeClient, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.run_command(parse(*argv), client)
    out, err = capsys.readouterr()
    return status, out, err


def test_the_submit_body_is_what_the_api_reads(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "main.py").write_text("print('hi')\n")
    args = parse(
        "submit", "--image", "img", "--cpu", "0.5", "--memory", "64M", "--gpus", "1",
        "--timeout", "30", "--max-cost", "2.5", "--env", "A=1=2", "--name", "n",
        "--bundle", str(tmp_path / "job"), "--", "python", "main.py", "--flag",
    )  # fmt: skip
    body = cli.submit_body(args)
    bundle = base64.b64decode(body.pop("bundle"))
    assert zipfile.ZipFile(io.BytesIO(bundle)).namelist() == ["main.py"]
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
    }
    body["bundle"] = base64.b64encode(bundle).decode()
    request = from_json(body)  # the API's (and hivemind-pool's) reading of it
    assert (request.resources.cpu_millis, request.resources.memory_bytes) == (500, 64 << 20)
    assert (request.max_cost, request.input_bundle, request.env["A"]) == (2_500_000, bundle, "1=2")


def test_defaults_are_left_to_the_hub() -> None:
    assert cli.submit_body(parse("submit", "--", "true")) == {"command": ["true"]}
    assert cli.submit_body(parse("submit", "--priority", "0")) == {"command": []}


def test_bad_submit_options_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="--env 'A' is not KEY=VALUE"):
        cli.submit_body(parse("submit", "--env", "A", "--", "true"))
    with pytest.raises(NotFound):
        cli.submit_body(parse("submit", "--bundle", str(tmp_path / "missing"), "--", "true"))
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match="not a zip"):
        cli.submit_body(parse("submit", "--bundle", str(tmp_path / "bad.zip"), "--", "true"))


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
    client = FakeClient(output=zip_of({"x": b"hi\n", "sub/y": b"there"}))
    target = tmp_path / "results"
    assert run(client, capsys, "result", "t1", "-o", str(target)) == (
        0,
        f"2 files from t1 in {target}\n",
        "",
    )
    assert (target / "x").read_bytes() == b"hi\n" and (target / "sub" / "y").exists()
    empty = run(FakeClient(), capsys, "result", "t1", "-o", str(tmp_path / "e"), "--json")
    assert json.loads(empty[1])["files"] == [] and not (tmp_path / "e").exists()


def test_result_files_follow_the_users_umask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeClient(output=zip_of({"sub/y": b"there"}))
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
    client = FakeClient(output=zip_of({"x": b"new", "z": b"also new"}))
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
