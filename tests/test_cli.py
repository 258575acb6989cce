"""The ``labkit`` command line: exit codes, files, messages."""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import re
import select
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from labkit.cli import build_parser, load_target, main, parse_params
from labkit.errors import StoreError
from labkit.experiment import Experiment
from labkit.store import Store
from labkit.testing import FakeClock

WORKLOAD = textwrap.dedent(
    """
    import asyncio

    async def work(ctx):
        for step in range(3):
            ctx.record(value=float(step + ctx.index))
            await asyncio.sleep(0.05)
        if ctx.index == ctx.params.get("fail"):
            raise RuntimeError("instance asked to fail")
        return {"scale": ctx.params.get("scale", 1)}
    """
)


def labkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "labkit.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_python_dash_m_labkit_is_the_labkit_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "labkit", "run", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: labkit run")
    wrong = subprocess.run(
        [sys.executable, "-m", "labkit", "no-such-command"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert wrong.returncode == 2 and "no-such-command" in wrong.stderr


def test_demo_prints_the_summary_writes_the_report_and_records_the_run(tmp_path: Path) -> None:
    done = labkit(
        "demo", "--duration", "2", "--report", "demo.html", "--db", "lab.db", cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    assert "error_burst: 3 instances" in done.stdout
    assert "num_instances" in done.stdout and "recovery_times" in done.stdout
    assert (tmp_path / "demo.html").stat().st_size > 1_000_000
    with Store(tmp_path / "lab.db") as store:
        frame = store.experiments()
    assert list(frame["name"]) == ["error_burst"]
    assert list(frame["succeeded"]) == [3]


def test_run_prints_each_metrics_last_value_or_the_figures_summarize_asks_for(
    tmp_path: Path,
) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)

    default = labkit("run", "workload:work", "-n", "2", "--no-db", "--no-progress", cwd=tmp_path)
    chosen = labkit(
        "run", "workload:work", "-n", "2", "--no-db", "--json",
        "--summarize", "value=max,value=mean", cwd=tmp_path,
    )  # fmt: skip

    assert default.returncode == 0, default.stderr
    figures = [line.split()[0] for line in default.stdout.splitlines()[2:]]
    assert "value_last" in figures and "value_peak" not in figures
    # Nothing recorded errors or recovery times: no figure says otherwise.
    assert "error_count" not in figures and "recovery_times" not in figures
    assert chosen.returncode == 0, chosen.stderr
    summary = json.loads(chosen.stdout)["summary"]
    assert summary["value_max"] == 2.5  # last steps 2 and 3
    assert summary["value_mean"] == 1.5  # means 1 and 2
    assert "value_last" not in summary


@pytest.mark.parametrize(
    ("value", "words"),
    [("value=median", "'median'"), ("value", "METRIC=KIND"), ("t=last", "METRIC=KIND")],
)
def test_a_bad_summarize_value_exits_2_naming_it(tmp_path: Path, value: str, words: str) -> None:
    for command in (["run", "workload:work"], ["sweep", "workload:work", "--grid", "a=1"]):
        done = labkit(*command, "--summarize", value, cwd=tmp_path)

        assert done.returncode == 2
        assert "--summarize" in done.stderr and words in done.stderr


def test_run_exits_1_when_an_instance_fails_and_still_writes_everything(tmp_path: Path) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    done = labkit(
        "run", "workload:work", "-n", "3", "--duration", "1", "--param", "fail=1",
        "--param", "scale=2.5", "--report", "out.html", "--db", "lab.db", "--json",
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)  # --json: stdout is the result, nothing else
    assert result["summary"]["num_failed"] == 1
    assert result["summary"]["errors"] == {"1": "RuntimeError: instance asked to fail"}
    assert result["summary"]["scale"] == 2.5
    assert result["params"] == {"fail": 1, "scale": 2.5}
    assert (tmp_path / "out.html").exists()

    assert main(["history", "--db", str(tmp_path / "lab.db")]) == 0


def test_bad_usage_exits_2_and_says_what_to_fix(tmp_path: Path) -> None:
    done = labkit("run", "no_such_module:fn", cwd=tmp_path)
    assert done.returncode == 2
    assert "cannot import module 'no_such_module'" in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "workload:work", "-n", "0"], "1 to 1024"),
        (["run", "workload:work", "--duration", "-3"], "seconds > 0"),
        (["run", "workload:work", "--param", "novalue"], "KEY=VALUE"),
        (["run", "workload"], "MODULE:FUNCTION"),
        (["run", "workload:missing"], "no attribute 'missing'"),
        (["run", "workload:work", "--report", "no/such/dir/r.html"], "does not exist"),
        (["run", "labkit.scenarios:cpu_stress", "--sandbox", "none"], "--sandbox local"),
        (["demo", "--scenario", "nope"], "invalid choice"),
        (["run", "workload:work", "--param", "a=NaN"], "NaN is not a usable parameter value"),
        (["run", "workload:work", "--param", "a=[1, -Infinity]"], "-Infinity is not a usable"),
        (["run", "workload:work", "--param", "a=1e999"], "1e999 is not a usable"),
        (["sweep", "workload:work", "--grid", "a=1,NaN", "--objective", "v"], "NaN is not"),
        (["run", "workload:work", "--report", "."], "is a directory"),
        (["run", "workload:work", "--duration", "inf"], "seconds > 0 and <= 86,400"),
        (["monitor", "--interval", "1e300"], "seconds > 0 and <= 86,400"),
        (["run", "workload:work", "--retries", "5000000"], "attempts=5000001"),
        (
            ["sweep", "workload:work", "--grid", "a=1", "--objective", "v", "--max-parallel", "0"],
            "1 to 1024",
        ),
        ([], "usage"),
    ],
)
def test_each_usage_error_exits_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("workload", None)
    try:
        with pytest.raises(SystemExit) as exited:
            raise SystemExit(main(argv))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("workload", None)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_targets_resolve_to_experiments() -> None:
    assert load_target("labkit.scenarios:cpu_stress").name == "cpu_stress"  # a factory
    experiment = load_target("labkit.scenarios:recovery_time")  # treated as fn(ctx, ...)
    assert isinstance(experiment, Experiment) and experiment.name == "recovery_time"
    assert parse_params(["a=1", "b=x", "c=[1, 2]", "d="]) == {
        "a": 1,
        "b": "x",
        "c": [1, 2],
        "d": "",
    }


def test_history_and_monitor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--db", str(tmp_path / "none.db")]) == 0
    assert "no experiments recorded yet" in capsys.readouterr().err
    assert main(["monitor", "--db", str(tmp_path / "none.db")]) == 0
    out = capsys.readouterr().out
    assert "machine: cpu" in out and "GPU" in out


def test_history_and_monitor_show_an_interrupted_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "lab.db"
    with Store(db) as store:
        dead, _ = store.begin(name="dead", params={}, instances=2, config={}, resume=False)
        alive, _ = store.begin(name="alive", params={}, instances=2, config={}, resume=False)
        # The dead run last beat an hour ago with a 1 s interval; the live one just now.
        store.heartbeat(dead, every=1.0)
        store.heartbeat(alive, every=60.0)
        store.flush()
    with sqlite3.connect(db) as conn:  # its process died an hour ago
        conn.execute("UPDATE experiments SET heartbeat = heartbeat - 3600 WHERE id = ?", (dead,))
    assert main(["history", "--db", str(db)]) == 0
    rows = {line.split()[1]: line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows == {"dead": "interrupted", "alive": "running"}
    assert main(["monitor", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"experiments running in {db}: 1" in out
    assert (
        f"experiments interrupted (their process died; resume=True picks them up) in {db}: 1" in out
    )
    assert f"  {dead} dead: 0/2 instances done" in out


def test_sweep_prints_each_trial_and_the_leaderboard(tmp_path: Path) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    done = labkit(
        "sweep", "workload:work", "--grid", "scale=3,1,2", "--objective", "scale",
        "--db", "lab.db", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("trial 0 ok: objective 3 (best so far: trial 0, 3)")
    assert lines[3] == "leaderboard:"
    assert [line.split()[2] for line in lines[4:7]] == ["1", "2", "0"]
    assert "scale=1" in lines[4]
    with Store(tmp_path / "lab.db") as store:
        assert len(store.experiments()) == 3


def test_a_raced_sweep_is_one_record_per_trial_in_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    done = labkit(
        "sweep", "workload:work", "--grid", "scale=3,1,2", "--objective", "scale",
        "-n", "race", "--db", "lab.db", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "trial 1 beats the other 2 at 95 %" in done.stdout
    assert main(["history", "--db", str(tmp_path / "lab.db")]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[-3:] == ["sweep", "trial", "params"]
    assert len(rows) == 3  # one grown experiment per trial, not one per round
    # Each row: id name status instances succeeded failed created (date time) sweep
    # trial params; the time to the second.
    cells = [row.split() for row in rows]
    assert sorted(row[-1] for row in cells) == ["scale=1", "scale=2", "scale=3"]
    assert all(row[4] == "5" for row in cells)  # the first round decided
    assert len({row[-3] for row in cells}) == 1  # one sweep ...
    assert sorted(row[-2] for row in cells) == ["0", "1", "2"]  # ... and its trials
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", row[7]) for row in cells)


def test_a_bad_report_path_or_param_stops_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    (tmp_path / "reports").mkdir()
    for bad in (["--report", "reports"], ["--param", "a=NaN"]):
        done = labkit("run", "workload:work", *bad, "--db", "lab.db", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "lab.db").exists()  # refused before the run began


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


@pytest.mark.parametrize("command", ["demo", "run", "sweep", "history", "monitor"])
def test_every_option_has_help_that_shows_its_default(command: str) -> None:
    sub = _subcommands()[command]
    text = " ".join(sub.format_help().split())  # unwrapped
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        assert action.help, f"{command} {action.option_strings[-1]} has no help"
        shown = sub._get_formatter()._get_help_string(action)  # as --help prints it
        assert shown is not None
        if not action.required:
            assert "(default" in shown, f"{command} {action.option_strings[-1]}: {shown}"
        assert " ".join(shown.replace("%(default)s", str(action.default)).split()) in text


def _read_blocks(fd: int, wanted: int, deadline_s: float = 30.0) -> bytes:
    """Read ``fd`` until ``wanted`` monitor blocks (their first line) have arrived."""
    data = b""
    end = time.monotonic() + deadline_s
    while data.count(b"machine: cpu") < wanted:
        left = end - time.monotonic()
        assert left > 0, f"monitor printed only {data!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"monitor ended early: {data!r}"
            data += chunk
    return data


def _monitor(stdout: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "labkit.cli", "monitor", "--interval", "0.05",
         "--db", str(tmp_path / "none.db")],
        stdout=stdout, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130


def test_monitor_piped_prints_plain_blocks(tmp_path: Path) -> None:
    read, write = os.pipe()
    process = _monitor(write, tmp_path)
    os.close(write)
    try:
        data = _read_blocks(read, 2)
    finally:
        _stop(process)
        os.close(read)
    assert b"\033" not in data
    assert b"\n\nmachine: cpu" in data  # one block per refresh, a blank line between


def test_monitor_on_a_terminal_redraws_in_place(tmp_path: Path) -> None:
    leader, follower = os.openpty()
    process = _monitor(follower, tmp_path)
    os.close(follower)
    try:
        data = _read_blocks(leader, 2)
    finally:
        _stop(process)
        os.close(leader)
    assert data.count(b"\033[2J\033[H") >= 2


def _read_only_mount_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _read_only_mount_works(), reason="needs root and unshare --mount")
def test_history_and_monitor_read_a_store_on_a_read_only_filesystem(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    with Store(folder / "lab.db") as store:
        store.begin(name="kept", params={}, instances=2, config={}, resume=False)
    # A real read-only bind mount, in a private mount namespace of the command only.
    script = (
        f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "
        f"touch {folder}/probe 2>/dev/null && exit 99; "
        f"{sys.executable} -m labkit.cli history --db {folder}/lab.db && "
        f"{sys.executable} -m labkit.cli monitor --db {folder}/lab.db"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr  # 99: the mount was not read-only
    assert " kept " in done.stdout.splitlines()[1]  # history: its row under the heading
    assert "0/2 instances done" in done.stdout  # monitor's line
    assert sorted(p.name for p in folder.iterdir()) == ["lab.db"]  # nothing written


def test_a_read_only_store_refuses_writes(tmp_path: Path) -> None:
    with Store(tmp_path / "lab.db") as store:
        store.begin(name="kept", params={}, instances=1, config={}, resume=False)
    with Store(tmp_path / "lab.db", read_only=True) as store:
        assert list(store.experiments()["name"]) == ["kept"]
        with pytest.raises(StoreError, match="read_only"):
            store.begin(name="new", params={}, instances=1, config={}, resume=False)
        with pytest.raises(StoreError, match="read_only"):
            store.sample("x", 0, 0.0, {"v": 1.0})
    with pytest.raises(StoreError, match="no such file"):
        Store(tmp_path / "missing.db", read_only=True)
    assert not (tmp_path / "missing.db").exists()


CPU_WORKLOAD = textwrap.dedent(
    """
    import os

    def work(ctx):
        ctx.record(value=float(ctx.index))
        return {"pid": os.getpid(), "seed_seen": ctx.seed}
    """
)


def test_run_with_the_process_executor_and_a_seed(tmp_path: Path) -> None:
    from labkit.seeds import instance_seed

    (tmp_path / "cpu_work.py").write_text(CPU_WORKLOAD)
    done = labkit(
        "run", "cpu_work:work", "-n", "2", "--executor", "process", "--seed", "9",
        "--no-db", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["config"]["executor"] == "process" and result["config"]["seed"] == 9
    instances = result["instances"]
    assert [i["seed"] for i in instances] == [instance_seed(9, 0), instance_seed(9, 1)]
    assert [i["summary"]["seed_seen"] for i in instances] == [i["seed"] for i in instances]
    assert len({i["summary"]["pid"] for i in instances}) == 2
    refused = labkit(
        "run", "labkit.scenarios:cpu_stress", "--executor", "process", "--no-db", cwd=tmp_path
    )
    assert refused.returncode == 2 and "--executor process" in refused.stderr
    bad_seed = labkit("run", "cpu_work:work", "--seed", "-1", cwd=tmp_path)
    assert bad_seed.returncode == 2 and "--seed" in bad_seed.stderr


# -- what the sweep says about its objective and its trials ------------------------------


def test_a_sweep_objective_that_names_nothing_stops_after_the_first_trial(tmp_path: Path) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    done = labkit(
        "sweep", "workload:work", "--grid", "scale=3,1,2", "--objective", "loss_last",
        "-n", "2", "--db", "lab.db", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    (message,) = done.stderr.strip().splitlines()
    assert message.startswith("labkit sweep: error: --objective loss_last:")
    # What exists, once the first trial's instances ran: its figures and its metrics.
    assert "summary figures: value_last, scale;" in message and "metrics: value" in message
    assert "leaderboard" not in done.stdout and "trial 0" not in done.stdout
    with Store(tmp_path / "lab.db") as store:
        frame = store.experiments()
    # Stopped there: no other trial ran an instance (the next one may have been begun).
    assert len(frame) < 3
    first = frame.iloc[0]
    assert first["labels"]["trial"] == 0 and first["succeeded"] == 2
    assert frame["succeeded"].iloc[1:].sum() == 0 and frame["failed"].sum() == 0


def test_a_raced_sweep_stops_on_an_unknown_objective_in_its_first_round(tmp_path: Path) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    done = labkit(
        "sweep", "workload:work", "--grid", "scale=3,1", "--objective", "nope",
        "-n", "race", "--no-db", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 2, done.stdout + done.stderr
    assert "--objective nope:" in done.stderr and "metrics: value" in done.stderr


@pytest.mark.parametrize("axis", ["t", "step"])
def test_an_axis_as_objective_is_refused_before_anything_runs(tmp_path: Path, axis: str) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    done = labkit(
        "sweep", "workload:work", "--grid", "scale=1", "--objective", axis, "--db", "lab.db",
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 2
    assert f"--objective {axis}: '{axis}' is an axis" in done.stderr
    assert not (tmp_path / "lab.db").exists()


def test_a_summary_figure_is_an_objective_as_its_help_says(tmp_path: Path) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    done = labkit(
        "sweep", "workload:work", "--grid", "scale=1,2", "--objective", "value_last",
        "-n", "2", "--no-db", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    # Each instance's last value is 2 + its index: 2 and 3, averaged.
    assert done.stdout.splitlines()[0] == "trial 0 ok: objective 2.5 (best so far: trial 0, 2.5)"


def test_a_raced_sweep_takes_a_summary_figure_as_its_objective(tmp_path: Path) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    done = labkit(
        "sweep", "workload:work", "--grid", "scale=1,2", "--objective", "value_last",
        "-n", "race", "--max-instances", "6", "--no-db", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    # Equal trials: neither is ruled out, each runs to 6 instances (last values 2 ... 7).
    lines = done.stdout.splitlines()
    assert lines[:2] == [
        "trial 0 ok: objective 4.5 (best so far: trial 0, 4.5)",
        "trial 1 ok: objective 4.5 (best so far: trial 0, 4.5)",
    ]


def test_a_failed_trial_says_why(tmp_path: Path) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    done = labkit(
        "sweep", "workload:work", "--grid", "scale=1,2", "--objective", "value_last",
        "--param", "fail=0", "--no-db", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[:2] == [
        f"trial {n} failed: RuntimeError: instance asked to fail (no trial succeeded so far)"
        for n in (0, 1)
    ]


def test_the_summary_table_says_what_its_spread_is(tmp_path: Path) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    done = labkit("run", "workload:work", "-n", "3", "--no-db", "--no-progress", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    heading, first = done.stdout.splitlines()[2:4]
    assert heading.split() == ["figure", "mean", "±", "ci95", "(min", "…", "max)"]
    assert first.split()[0] == "value_last" and " ± " in first


def test_progress_bars_say_what_is_known_and_fill_only_when_an_instance_ended(
    tmp_path: Path,
) -> None:
    (tmp_path / "workload.py").write_text(WORKLOAD)
    leader, follower = os.openpty()  # the bars are drawn only on a terminal ...
    # ... as wide as it says it is: a new pseudo-terminal says 0 columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "labkit.cli", "run", "workload:work", "-n", "2",
         "--duration", "1", "--no-db"],
        stdout=subprocess.DEVNULL, stderr=follower, cwd=tmp_path,
    )  # fmt: skip
    os.close(follower)
    data = b""
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            assert ready, f"no output for 60 s: {data!r}"
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            data += chunk
    finally:
        assert process.wait(timeout=60) == 0
        os.close(leader)
    text = data.decode()
    assert "instance 1:" in text
    assert "running · " in text and "done · 3 samples · " in text
    # The function ignores ctx.duration: no percentage says how far a running
    # instance is, and a bar is full only once its instance ended.
    frames = [frame for frame in re.split(r"[\r\n]|\x1b\[A", text) if "instance" in frame]
    assert all("%" not in frame for frame in frames if "running" in frame)
    assert all("done" in frame for frame in frames if "100%" in frame)
    assert any("100%" in frame for frame in frames) and ", " not in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_past_sixteen_instances_the_bars_are_one_line_of_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labkit.cli.progress import ProgressBars
    from labkit.experiment import run_experiment

    async def work(ctx: Any) -> None:
        for step in range(3):
            ctx.record(value=float(step), step=step)
            await ctx.sleep(0.01)

    clock = FakeClock(autojump=True)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bars = ProgressBars(20, None, enabled=True, clock=clock)
    await run_experiment(Experiment("many", work), instances=20, on_event=bars, clock=clock)
    bars.close()

    text = terminal.getvalue()
    assert "instances: 20/20 ended" in text and "20 instances: 20 done" in text
    assert "instance 3:" not in text  # no bar of its own per instance
