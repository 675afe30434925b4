"""Every ``fedgeo`` command that reads a user's file answers a malformed one with exit
status 2 and ONE line on stderr naming the file, and the line and field where there is
one; never a traceback. Wrong option values likewise exit 2 with one line.

tests/test_bad_input.py covers the readers (every damage, every format) and ``fedgeo
data inspect`` on fixed cases. Here hypothesis damages generated check-in files (truncated,
wrong delimiter, wrong encoding, missing column, bad number, unparsable time, coordinate
out of range, empty, compressed and cut, too little data to train) and feeds each to
every command: ``data inspect``, ``baseline``, ``centralized``, ``simulate`` and ``agent
ingest``. ``simulate`` must find the problem before the simulation engine starts: its
engine is replaced by a function that fails the test. Two runs of the installed console
script check the real exit status and stderr.
"""

from __future__ import annotations

import gzip
import shutil
import string
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HEADER = ["user_id", "location_id", "latitude", "longitude", "time_min"]
CANONICAL = {"time_min": "timestamp"}
"""A missing column is reported under its canonical name."""
PLACES = [(str(100 + i), 40.70 + 0.01 * (i % 5), -73.95 + 0.013 * (i // 5)) for i in range(20)]
"""The public place table (id, latitude, longitude) the generated check-ins visit."""


@dataclass
class Damaged:
    """A damaged file and where its first problem is."""

    kind: str
    content: bytes
    line: int | None
    field: str | None
    says: str
    suffix: str = ".csv"


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


garbage = st.text(
    alphabet=string.ascii_letters + string.digits + " .-+:/#_'()éü",
    max_size=8,
).filter(_not_a_number)
out_of_range = {
    "latitude": st.floats(90.001, 1e6) | st.floats(-1e6, -90.001),
    "longitude": st.floats(180.001, 1e6) | st.floats(-1e6, -180.001),
}


@st.composite
def checkin_rows(draw, users: int) -> list[list[str]]:
    """Valid rows: each user 2-4 check-ins an hour or two apart, days apart from the
    next user, at places of :data:`PLACES`."""
    rows = []
    for u in range(users):
        t = u * 3 * 1440 + draw(st.integers(0, 600))
        for _ in range(draw(st.integers(2, 4))):
            pid, lat, lon = draw(st.sampled_from(PLACES))
            rows.append([str(7 + u), pid, repr(lat), repr(lon), str(t)])
            t += draw(st.integers(30, 180))
    return rows


def render(rows: list[list[str]], sep: str = ",", header: list[str] = HEADER) -> str:
    return sep.join(header) + "\n" + "".join(sep.join(r) + "\n" for r in rows)


KINDS = (
    "truncated",
    "delimiter-row",
    "delimiter-file",
    "encoding-utf16",
    "encoding-latin1",
    "missing-column",
    "bad-number",
    "bad-time",
    "out-of-range",
    "empty",
    "gzip-cut",
    "too-little-data",
)


@st.composite
def damaged_files(draw, kinds: tuple[str, ...] = KINDS, users: int | None = None) -> Damaged:
    """A generated check-in file with one kind of damage."""
    users = users if users is not None else draw(st.integers(1, 3))
    rows = draw(checkin_rows(users))
    kind = draw(st.sampled_from(kinds))
    r = draw(st.integers(0, len(rows) - 1), label="row")
    line = r + 2  # the header is line 1
    if kind == "truncated":
        last = ",".join(rows[-1])
        cut = last[: draw(st.integers(1, last.rindex(",") + 1))]
        present = cut.count(",") + 1
        field = HEADER[min(present, len(HEADER) - 1)]
        text = render(rows[:-1]) + cut
        return Damaged(kind, text.encode(), len(rows) + 1, field, "truncated")
    if kind == "delimiter-row":
        sep = draw(st.sampled_from([";", "\t"]))
        lines = render(rows).splitlines(keepends=True)
        lines[line - 1] = sep.join(rows[r]) + "\n"
        return Damaged(kind, "".join(lines).encode(), line, "location_id", "found 1")
    if kind == "delimiter-file":
        sep = draw(st.sampled_from([";", "\t", "|"]))
        return Damaged(kind, render(rows, sep).encode(), 1, "user_id", "missing column")
    if kind == "encoding-utf16":
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be"]))
        return Damaged(kind, render(rows).encode(codec), 1, None, "wrong encoding")
    if kind == "encoding-latin1":
        k = draw(st.sampled_from([0, 1]))
        rows[r][k] += "é"
        return Damaged(kind, render(rows).encode("latin-1"), line, HEADER[k], "wrong encoding")
    if kind == "missing-column":
        k = draw(st.integers(0, len(HEADER) - 1))
        header = HEADER[:k] + HEADER[k + 1 :]
        rows = [row[:k] + row[k + 1 :] for row in rows]
        name = CANONICAL.get(HEADER[k], HEADER[k])
        return Damaged(kind, render(rows, header=header).encode(), 1, name, "missing column")
    if kind in ("bad-number", "bad-time", "out-of-range"):
        k = 4 if kind == "bad-time" else draw(st.sampled_from([2, 3]))
        if kind == "out-of-range":
            rows[r][k] = repr(draw(out_of_range[HEADER[k]]))
        else:
            rows[r][k] = draw(garbage, label="garbage")
        return Damaged(kind, render(rows).encode(), line, HEADER[k], "")
    if kind == "empty":
        text, where = draw(st.sampled_from([("", 1), ("\n \n\t\n", 1), (render([]), 2)]))
        return Damaged(kind, text.encode(), where, None, "")
    if kind == "gzip-cut":
        packed = gzip.compress(render(rows).encode())
        cut = draw(st.integers(10, len(packed) - 1))
        return Damaged(kind, packed[:cut], None, None, "corrupt or truncated gzip", ".csv.gz")
    assert kind == "too-little-data"
    singles = [next(row for row in rows if row[0] == u) for u in dict.fromkeys(r[0] for r in rows)]
    return Damaged(kind, render(singles).encode(), None, None, "too little data to train")


def where(path: Path, damaged: Damaged) -> str:
    """The start of the expected message: file, line and field."""
    text = f"fedgeo: error: {path}"
    if damaged.line is not None:
        text += f":{damaged.line}"
    text += ": "
    if damaged.field is not None:
        text += f"field '{damaged.field}': "
    return text


def engine_must_not_start(*args, **kwargs):
    raise AssertionError("the simulation engine started: bad input must fail before")


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    import experiments.simulate_cli

    monkeypatch.setattr(experiments.simulate_cli, "simulate", engine_must_not_start)


@pytest.fixture
def places_csv(tmp_path: Path) -> Path:
    path = tmp_path / "places.csv"
    path.write_text(
        "location_id,latitude,longitude\n" + "".join(f"{p},{a!r},{o!r}\n" for p, a, o in PLACES)
    )
    return path


@pytest.fixture
def agent_dir(tmp_path: Path, places_csv: Path, run_cli) -> Path:
    """An initialized device-agent folder (``fedgeo agent init``)."""
    folder = tmp_path / "agent"
    status, _, err = run_cli(["agent", "init", "--dir", folder, "--places", places_csv])
    assert "invalid choice: 'agent'" not in err, "the 'fedgeo agent' entry point is missing"
    assert status == 0, err
    return folder


def argv_for(command: str, path: Path, out: Path, agent: Path | None = None) -> list:
    if command == "data inspect":
        return ["data", "inspect", path]
    if command == "baseline":
        return ["baseline", "--data", path, "--out", out]
    if command == "centralized":
        tiny = ["--epochs", 1, "--embedding-dim", 4, "--hidden-dim", 4, "--no-progress"]
        return ["centralized", "--data", path, "--out", out, *tiny]
    if command == "simulate":
        return ["simulate", "--data", path, "--strategy", "fedavg", "--out", out, "--no-progress"]
    assert command == "agent ingest"
    return ["agent", "ingest", "--dir", agent, path]


def assert_one_line_error(status: int, out: str, err: str, start: str, says: str = "") -> None:
    assert status == 2, err
    assert out == ""
    assert err.startswith(start), err
    assert says in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err


PROPERTY = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
COMMANDS = ("data inspect", "baseline", "centralized", "simulate")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", COMMANDS)
@PROPERTY
@given(data=st.data())
def test_every_command_reports_damaged_files_in_one_line(
    tmp_path, run_cli, no_engine, command, kind, data
):
    damaged = data.draw(damaged_files((kind,)))
    path = tmp_path / f"{uuid.uuid4().hex}{damaged.suffix}"  # fresh name: no cache hits
    path.write_bytes(damaged.content)
    status, out, err = run_cli(argv_for(command, path, tmp_path / "out"))
    if command == "data inspect" and kind == "too-little-data":
        assert status == 0, err  # inspect describes any readable file, however small
        return
    assert_one_line_error(status, out, err, where(path, damaged), damaged.says)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "too-little-data"])
@PROPERTY
@given(data=st.data())
def test_agent_ingest_reports_damaged_files_in_one_line(tmp_path, run_cli, agent_dir, kind, data):
    """A device's store takes one user's check-ins, however few: no too-little-data."""
    damaged = data.draw(damaged_files((kind,), users=1))
    path = tmp_path / f"{uuid.uuid4().hex}{damaged.suffix}"
    path.write_bytes(damaged.content)
    status, out, err = run_cli(argv_for("agent ingest", path, tmp_path, agent_dir))
    assert_one_line_error(status, out, err, where(path, damaged), damaged.says)


# --- other formats: one fixed damaged file each, through every command -------------------

TSMC = (
    "7\tv1\tc1\tBar\t40.70\t-73.90\t-240\tSat Jun 16 21:29:30 +0000 2012\n"
    "7\tv2\tc2\tCafe\t40.71\t-73.91\t-240\tSat Jun 16 22:00:00 +0000 2012\n"
    "7\tv1\tc1\tBar\t40.70\t-73.90\t-240\tSat Jun 16 25:10:00 +0000 2012\n"
)
SNAP = (
    "7\t2010-10-19T23:55:27Z\t30.25\t-97.75\t1001\n"
    "7\t2010-10-19T22:17:43Z\t30.26\t-97.74\t1002\n"
    "7\t2010-10-19T21:42:03Z\t30.27\t-197.73\t1003\n"
)
OTHER_FORMATS = [
    ("tsmc2014", TSMC, "latin-1", 3, "utcTimestamp", "cannot parse time"),
    ("snap", SNAP, "utf-8", 3, "longitude", "outside [-180, 180]"),
]


@pytest.mark.parametrize(
    "command", ["data inspect", "baseline", "centralized", "simulate", "agent ingest"]
)
@pytest.mark.parametrize(
    ("fmt", "text", "encoding", "line", "field", "says"),
    OTHER_FORMATS,
    ids=[f[0] for f in OTHER_FORMATS],
)
def test_raw_formats_name_line_and_field_in_every_command(
    tmp_path, run_cli, no_engine, request, command, fmt, text, encoding, line, field, says
):
    agent = request.getfixturevalue("agent_dir") if command == "agent ingest" else None
    path = tmp_path / f"bad.{fmt}.txt"
    path.write_bytes(text.encode(encoding))
    status, out, err = run_cli([*argv_for(command, path, tmp_path / "out", agent), "--format", fmt])
    assert_one_line_error(
        status, out, err, f"fedgeo: error: {path}:{line}: field '{field}': ", says
    )


# --- wrong option values -----------------------------------------------------------------

GOOD_CSV = render(
    [
        ["7", "100", "40.7", "-73.95", "0"],
        ["7", "101", "40.71", "-73.95", "60"],
        ["8", "102", "40.72", "-73.95", "5000"],
        ["8", "100", "40.7", "-73.95", "5060"],
    ]
)
ONE_USER_CSV = render([["7", "100", "40.7", "-73.95", "0"], ["7", "101", "40.71", "-73.95", "60"]])
SIMULATE = ["simulate", "--strategy", "fedavg", "--no-progress"]
BAD_OPTIONS = [
    # (id, argv with {data}, {one}, {out} and {file} placeholders, expected text)
    ("strategy-unknown", ["simulate", "--strategy", "nope", "--out", "{out}"], "unknown strategy"),
    (
        "strategy-bad-import",
        ["simulate", "--strategy", "no_such_module:Cls", "--out", "{out}"],
        "cannot import module",
    ),
    ("set-unknown-key", [*SIMULATE, "--out", "{out}", "--set", "no-such-key=1"], "no-such-key"),
    ("set-no-equals", [*SIMULATE, "--out", "{out}", "--set", "num-rounds"], "KEY=VALUE"),
    ("set-bad-int", [*SIMULATE, "--out", "{out}", "--set", "num-rounds=many"], "expected int"),
    ("set-bad-float", [*SIMULATE, "--out", "{out}", "--set", "lr=fast"], "expected float"),
    ("set-zero-rounds", [*SIMULATE, "--out", "{out}", "--set", "num-rounds=0"], "must be >= 1"),
    ("set-test-every", [*SIMULATE, "--out", "{out}", "--set", "test-every=-1"], "'test-every'"),
    ("test-every-option", [*SIMULATE, "--out", "{out}", "--test-every", "0"], "integer >= 1"),
    ("set-fraction", [*SIMULATE, "--out", "{out}", "--set", "fraction-train=2"], "(0, 1]"),
    ("set-negative-lr", [*SIMULATE, "--out", "{out}", "--set", "lr=-1"], "learning rate"),
    ("set-optimizer", [*SIMULATE, "--out", "{out}", "--set", "optimizer=rms"], "optimizer"),
    ("set-model-window", [*SIMULATE, "--out", "{out}", "--set", "model-window=0"], "model-*"),
    ("set-attack", [*SIMULATE, "--out", "{out}", "--set", "inject-attack=zap"], "inject-attack"),
    ("set-protocol", [*SIMULATE, "--out", "{out}", "--set", "protocol-train-frac=2"], "train_frac"),
    (
        "set-time-unit",
        [*SIMULATE, "--data", "{data}", "--out", "{out}", "--set", "time-unit=weeks"],
        "unknown time_unit",
    ),
    ("fraction-option", [*SIMULATE, "--out", "{out}", "--fraction", "2"], "(0, 1]"),
    ("cpus-option", [*SIMULATE, "--out", "{out}", "--cpus", "0"], "integer >= 1"),
    ("backend-option", [*SIMULATE, "--out", "{out}", "--backend", "gpu"], "invalid choice"),
    (
        "process-backend-on-a-cluster",
        [*SIMULATE, "--out", "{out}", "--backend", "process", "--ray-address", "127.0.0.1:9"],
        "runs on this machine only",
    ),
    (
        "too-few-users",
        [*SIMULATE, "--data", "{one}", "--out", "{out}"],
        "1 user(s) after preprocessing",
    ),
    ("simulate-out-is-a-file", [*SIMULATE, "--out", "{file}"], "File exists"),
    ("baseline-out-is-a-file", ["baseline", "--data", "{data}", "--out", "{file}"], "File exists"),
    ("baseline-method", ["baseline", "--method", "magic", "--out", "{out}"], "invalid choice"),
    ("baseline-train-frac", ["baseline", "--train-frac", "0", "--out", "{out}"], "train_frac"),
    (
        "centralized-batch-size",
        ["centralized", "--data", "{data}", "--out", "{out}", "--batch-size", "0"],
        "integer >= 1",
    ),
    ("centralized-lr", ["centralized", "--out", "{out}", "--lr", "-1"], "number > 0"),
    ("centralized-window", ["centralized", "--out", "{out}", "--window", "0"], "integer >= 1"),
    ("centralized-dropout", ["centralized", "--out", "{out}", "--dropout", "1"], "model-dropout"),
    (
        "centralized-weight-decay",
        ["centralized", "--out", "{out}", "--weight-decay", "-1"],
        "number >= 0",
    ),
    (
        "centralized-checks",
        ["centralized", "--out", "{out}", "--checks-per-epoch", "0"],
        "integer >= 1",
    ),
    (
        "centralized-place-lr-scale",
        ["centralized", "--out", "{out}", "--place-lr-scale", "-0.5"],
        "number >= 0",
    ),
    (
        "centralized-training-memory",
        ["centralized", "--out", "{out}", "--training-memory", "future"],
        "invalid choice",
    ),
    (
        "centralized-shared-score-init",
        ["centralized", "--out", "{out}", "--shared-score-init", "ones"],
        "invalid choice",
    ),
    (
        "centralized-prior-gate-bias",
        ["centralized", "--out", "{out}", "--prior-gate-bias", "low"],
        "invalid float value",
    ),
    (
        "centralized-population-epsilon",
        ["centralized", "--out", "{out}", "--population-prior", "--population-epsilon", "-1"],
        "number > 0",
    ),
    ("inspect-encoding", ["data", "inspect", "{data}", "--encoding", "klingon"], "encoding"),
    ("unknown-command", ["nonsense"], "invalid choice"),
]


@pytest.mark.parametrize(
    ("argv", "says"), [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS]
)
def test_wrong_options_exit_2_with_one_line(tmp_path, run_cli, no_engine, argv, says):
    (tmp_path / "good.csv").write_text(GOOD_CSV)
    (tmp_path / "one.csv").write_text(ONE_USER_CSV)
    (tmp_path / "a-file").write_text("")
    names = {"{data}": "good.csv", "{one}": "one.csv", "{out}": "out", "{file}": "a-file"}
    argv = [str(tmp_path / names[a]) if a in names else a for a in argv]
    status, out, err = run_cli(argv)
    assert status == 2, err
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("fedgeo"), err
    assert says in err, err


def test_resume_from_a_damaged_checkpoint_exits_2(tmp_path, run_cli, no_engine):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pkl").write_bytes(b"\x80\x05not a pickle")
    status, stdout, err = run_cli([*SIMULATE, "--out", out, "--resume"])
    start = f"fedgeo: error: {out / 'checkpoint.pkl'}: not a readable FedGeo checkpoint"
    assert_one_line_error(status, stdout, err, start, "delete it to start afresh")


# --- the installed console script ---------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["baseline", "--data", "{bad}", "--out", "{out}"],
        ["simulate", "--data", "{bad}", "--strategy", "fedavg", "--out", "{out}"],
    ],
    ids=["baseline", "simulate"],
)
def test_console_script_exit_status_and_stderr(tmp_path, argv):
    script = shutil.which("fedgeo")
    if script is None:
        pytest.skip("the fedgeo console script is not installed")
    bad = tmp_path / "bad.csv"
    bad.write_text(GOOD_CSV.replace("40.71", "40.71.5"))
    argv = [
        str(bad) if a == "{bad}" else str(tmp_path / "out") if a == "{out}" else a for a in argv
    ]
    done = subprocess.run([script, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"fedgeo: error: {bad}:3: field 'latitude': not a number: '40.71.5' "
        "[1 bad row of 4; skip_bad=True / --skip-bad-rows drops them]\n"
    )
