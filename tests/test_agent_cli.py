"""``fedgeo agent``: init, ingest, join, predict and status on a synthetic user."""

from __future__ import annotations

import io
import json
import string
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import procfs
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.agent.folder import AgentFolder
from client.agent.store import CheckinStore
from fedgeo.data.places_io import read_places_csv, write_places_csv
from fedgeo.data.protocol import preprocess
from fedgeo.data.synthetic import SyntheticConfig, generate_city
from fedgeo.geo.prior import AdjacencyPrior, PriorConfig
from fedgeo.models import ModelConfig, build_model
from fedgeo.models.portable import model_metadata

USER = 2
# The shared score starts random here, as a trained model's is: with the default zero start
# the personal user vector (an input of the query network) would not move any score yet.
TINY = ModelConfig(embedding_dim=8, hidden_dim=8, window=5, dropout=0.0, shared_score_init="random")
"""A tiny model with the default options, history scores included."""


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    """A synthetic city's check-ins and its public place table file."""
    table = generate_city(SyntheticConfig(num_users=3, num_places=40, days=14, seed=5))
    places = tmp_path_factory.mktemp("city") / "places.csv"
    write_places_csv(preprocess(table).places, places)
    return table, places


@pytest.fixture
def agent(city, tmp_path: Path, run_cli) -> AgentFolder:
    """An initialized agent folder."""
    folder = AgentFolder(tmp_path / "agent")
    status, _, err = run_cli(["agent", "init", "--dir", folder.root, "--places", city[1]])
    assert status == 0, err
    return folder


def user_file(city, tmp_path: Path, user: int = USER) -> Path:
    path = tmp_path / f"user{user}.csv"
    city[0][city[0]["user_id"] == user].to_csv(path, index=False)
    return path


def test_init_creates_a_private_key_flower_accepts(agent: AgentFolder, run_cli) -> None:
    key = serialization.load_ssh_private_key(agent.private_key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP384R1)
    assert agent.private_key_path.stat().st_mode & 0o777 == 0o600
    assert agent.keys_dir.stat().st_mode & 0o777 == 0o700
    assert agent.root.stat().st_mode & 0o777 == 0o700
    public = serialization.load_ssh_public_key(agent.public_key_path.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey) and uses_nist_ec_curve(public)
    assert public.public_numbers() == key.public_key().public_numbers()
    assert agent.places_path.is_file() and agent.state_dir.is_dir()
    assert agent.load().data_format == "csv"


def test_second_init_refuses_without_force(agent, city, tmp_path, run_cli) -> None:
    run_cli(["agent", "ingest", "--dir", agent.root, user_file(city, tmp_path)])
    key = agent.private_key_path.read_bytes()
    status, _, err = run_cli(["agent", "init", "--dir", agent.root, "--places", city[1]])
    assert status == 2 and "--force" in err and "Traceback" not in err
    assert agent.private_key_path.read_bytes() == key
    status, _, _ = run_cli(["agent", "init", "--dir", agent.root, "--places", city[1], "--force"])
    assert status == 0
    assert agent.private_key_path.read_bytes() != key
    assert agent.private_key_path.stat().st_mode & 0o777 == 0o600
    assert CheckinStore(agent.store_path).count() > 0  # the store is kept


def test_init_with_a_bad_place_table_leaves_nothing(tmp_path: Path, run_cli) -> None:
    places = tmp_path / "places.csv"
    places.write_text("location_id,latitude,longitude\n1,40.7,-74.0\n2,140.7,-74.0\n")
    status, _, err = run_cli(["agent", "init", "--dir", tmp_path / "a", "--places", places])
    assert status == 2
    assert err.startswith(f"fedgeo: error: {places}:3: field 'latitude'")
    assert not (tmp_path / "a").exists()


def test_commands_need_an_initialized_folder(tmp_path: Path, run_cli, monkeypatch) -> None:
    monkeypatch.setenv("FEDGEO_AGENT_DIR", str(tmp_path / "nowhere"))
    for command in (["ingest", "x.csv"], ["status"], ["predict"]):
        status, _, err = run_cli(["agent", *command])
        assert status == 2, command
        assert f"{tmp_path / 'nowhere'}: not an agent folder" in err
        assert "fedgeo agent init" in err


def test_ingest_is_idempotent_and_reports(agent, city, tmp_path, run_cli) -> None:
    source = user_file(city, tmp_path)
    n = int((city[0]["user_id"] == USER).sum())
    status, out, _ = run_cli(["agent", "ingest", "--dir", agent.root, source])
    assert status == 0 and f"added {n} check-in(s), 0 already stored" in out
    status, out, _ = run_cli(["agent", "ingest", "--dir", agent.root, source])
    assert status == 0 and f"added 0 check-in(s), {n} already stored" in out
    assert CheckinStore(agent.store_path).count() == n


def test_ingest_bad_rows_both_policies(agent, tmp_path: Path, run_cli) -> None:
    places = read_places_csv(agent.places_path)
    pid, lat, lon = places.ids[0], places.latitude[0], places.longitude[0]
    lines = ["user_id,location_id,latitude,longitude,timestamp"] + [
        f"1,{pid},{lat},{lon},{1704067200 + 600 * i}" for i in range(4)
    ]
    lines[3] = f"1,{pid},{lat},north,1704069000"
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    status, _, err = run_cli(["agent", "ingest", "--dir", agent.root, path])
    assert status == 2 and "Traceback" not in err
    assert err.startswith(f"fedgeo: error: {path}:4: field 'longitude':")
    assert CheckinStore(agent.store_path).count() == 0
    status, out, err = run_cli(["agent", "ingest", "--dir", agent.root, path, "--skip-bad-rows"])
    assert status == 0 and "added 3 check-in(s)" in out and "1 rejected" in out
    assert f"rejected: {path}:4: field 'longitude'" in err
    assert CheckinStore(agent.store_path).count() == 3


def test_ingest_refuses_another_user(agent, city, tmp_path, run_cli) -> None:
    run_cli(["agent", "ingest", "--dir", agent.root, user_file(city, tmp_path)])
    n = CheckinStore(agent.store_path).count()
    other = user_file(city, tmp_path, user=1)
    status, _, err = run_cli(["agent", "ingest", "--dir", agent.root, other])
    assert status == 2 and "field 'user_id'" in err and "one user" in err
    assert CheckinStore(agent.store_path).count() == n


def test_ingest_from_standard_input(agent, city, tmp_path, run_cli, monkeypatch) -> None:
    text = user_file(city, tmp_path).read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text)))
    status, out, _ = run_cli(["agent", "ingest", "--dir", agent.root, "-"])
    assert status == 0 and out.startswith("<stdin>: added")
    assert CheckinStore(agent.store_path).count() == int((city[0]["user_id"] == USER).sum())


_LETTERS = st.text(alphabet=string.ascii_letters, min_size=1, max_size=8)


@st.composite
def malformed(draw) -> tuple[str, str]:
    """A malformed CSV line and the field a message should name."""
    kind = draw(st.sampled_from(["latitude", "longitude", "user_id", "short", "long"]))
    lat, lon = "40.7", "-74.0"
    if kind == "latitude":
        lat = draw(_LETTERS | st.floats(90.5, 1e9).map(repr))
    if kind == "longitude":
        lon = draw(_LETTERS | st.floats(-1e9, -180.5).map(repr))
    user = "" if kind == "user_id" else "1"
    line = f"{user},P,{lat},{lon},1704067200"
    if kind == "short":
        line = ",".join(line.split(",")[: draw(st.integers(1, 4))])
    if kind == "long":
        line += "," + draw(_LETTERS)
    return line, kind


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(bad=malformed(), position=st.integers(0, 4))
def test_malformed_lines_are_refused_cleanly(agent, tmp_path, run_cli, bad, position) -> None:
    places = read_places_csv(agent.places_path)
    pid, lat, lon = places.ids[0], places.latitude[0], places.longitude[0]
    header = "user_id,location_id,latitude,longitude,timestamp"
    stored = tmp_path / "stored.csv"
    stored.write_text("\n".join([header, f"1,{pid},{lat},{lon},1704000000"]) + "\n")
    assert run_cli(["agent", "ingest", "--dir", agent.root, stored])[0] == 0
    before = CheckinStore(agent.store_path).count()
    good = [f"1,{pid},{lat},{lon},{1704067200 + 60 * i}" for i in range(4)]
    lines = [header, *good]
    lines.insert(position + 1, bad[0].replace("P", str(pid)))
    path = tmp_path / f"bad-{abs(hash((bad, position)))}.csv"
    path.write_text("\n".join(lines) + "\n")
    status, _, err = run_cli(["agent", "ingest", "--dir", agent.root, path])
    assert status == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"fedgeo: error: {path}:{position + 2}: field '")
    if bad[1] in ("latitude", "longitude", "user_id"):
        assert f"field '{bad[1]}'" in err
    assert CheckinStore(agent.store_path).count() == before == 1


def save_model(agent: AgentFolder, *, server_round: int = 2, run_key: str = "run-1") -> None:
    """A freshly initialized global model for the agent's public place table."""
    places = read_places_csv(agent.places_path)
    prior_config = PriorConfig(k=4)
    prior = AdjacencyPrior.from_places(places, prior_config)
    model, _ = build_model(
        len(places), 1, TINY, prior, seed=1, coordinates=places.coordinates()
    )
    meta = model_metadata(
        model_config=TINY.to_dict(),
        prior_config=prior_config.to_dict(),
        prior_checksum=prior.checksum(),
        places=places,
        server_round=server_round,
        run_key=run_key,
    )
    agent.save_model(model.shared_state(), meta)


def save_personal_state(agent: AgentFolder, server_round: int, node_id: int = 5) -> None:
    """Personal state as the ClientApp keeps it (client.state, a device's state-dir)."""
    from flwr.app import Context, RecordDict

    from client.state import ClientStateStore

    context = Context(0, node_id, {"state-dir": str(agent.state_dir)}, RecordDict(), {})
    store = ClientStateStore(context, {"run-key": "run-1"}, node_id, simulated=False)
    weight = np.random.default_rng(0).normal(0, 3.0, size=(1, TINY.embedding_dim))
    store.save(server_round, {"personal.user_embedding.weight": weight.astype(np.float32)})


def test_predict_without_a_model_exits_2(agent, city, tmp_path, run_cli) -> None:
    run_cli(["agent", "ingest", "--dir", agent.root, user_file(city, tmp_path)])
    status, out, err = run_cli(["agent", "predict", "--dir", agent.root])
    assert status == 2 and out == ""
    assert "no global model yet" in err and "Traceback" not in err


def test_predict_returns_k_valid_place_ids(agent, city, tmp_path, run_cli) -> None:
    run_cli(["agent", "ingest", "--dir", agent.root, user_file(city, tmp_path)])
    save_model(agent)
    at = int(city[0]["timestamp"].max()) + 3600
    argv = ["agent", "predict", "--dir", agent.root, "--top", 5, "--json", "--at", at]
    status, out, err = run_cli(argv)
    assert status == 0, err
    result = json.loads(out)
    ids = [entry["place_id"] for entry in result["top"]]
    public = set(read_places_csv(agent.places_path).ids.tolist())
    assert len(ids) == 5 and len(set(ids)) == 5 and set(ids) <= public
    probabilities = [entry["probability"] for entry in result["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    assert result["at"] == at and result["model_round"] == 2
    assert result["personal_state"] is False

    # Personal state of the model's run is loaded and changes the scores.
    save_personal_state(agent, server_round=2)
    status, out, _ = run_cli(argv)
    personal = json.loads(out)
    assert status == 0 and personal["personal_state"] is True
    assert personal["top"] != result["top"]
    # State of a later round than the model's is not paired with it.
    save_model(agent, server_round=1)
    status, out, _ = run_cli(argv)
    assert json.loads(out)["personal_state"] is False

    status, out, _ = run_cli(["agent", "predict", "--dir", agent.root, "--top", 3])
    rows = [line.split("\t") for line in out.splitlines()[2:]]
    assert status == 0 and len(rows) == 3 and [r[0] for r in rows] == ["1", "2", "3"]


def test_predict_refuses_a_model_for_other_places(agent, city, tmp_path, run_cli) -> None:
    run_cli(["agent", "ingest", "--dir", agent.root, user_file(city, tmp_path)])
    save_model(agent)
    table = pd.read_csv(agent.places_path)
    table.loc[0, "latitude"] += 0.01
    table.to_csv(agent.places_path, index=False)
    status, _, err = run_cli(["agent", "predict", "--dir", agent.root])
    assert status == 2 and "field 'places_checksum'" in err


def test_status_reports_store_round_and_model(agent, city, tmp_path, run_cli) -> None:
    status, out, _ = run_cli(["agent", "status", "--dir", agent.root])
    assert status == 0 and "check-ins:         0" in out and "none yet" in out
    run_cli(["agent", "ingest", "--dir", agent.root, user_file(city, tmp_path)])
    save_model(agent, server_round=2)
    agent.update_status(last_round=2, node_id=5)
    status, out, _ = run_cli(["agent", "status", "--dir", agent.root, "--json"])
    info = json.loads(out)
    rows = city[0][city[0]["user_id"] == USER]
    assert status == 0
    assert info["store"]["rows"] == len(rows)
    assert info["store"]["distinct_places"] == rows["location_id"].nunique()
    assert info["store"]["first_time"] == rows["timestamp"].min()
    assert info["store"]["last_time"] == rows["timestamp"].max()
    assert info["last_round"] == 2 and info["run_key"] == "run-1"
    assert info["model"]["round"] == 2 and info["model"]["run_key"] == "run-1"
    status, out, _ = run_cli(["agent", "status", "--dir", agent.root])
    assert "last round joined: 2" in out and "model:             round 2 of run run-1" in out


def test_join_runs_the_supernode_with_the_agent_folder(
    agent, tmp_path, run_cli, monkeypatch
) -> None:
    calls = []

    def run_supernode(agent_dir, superlink, root_certificates, *, extra_args=None) -> int:
        if extra_args and "--node-config" in extra_args:
            raise ValueError("--node-config cannot be passed to an agent's SuperNode")
        calls.append((agent_dir, superlink, root_certificates, extra_args))
        return 7

    fake = types.ModuleType("client.agent.supernode")
    fake.run_supernode = run_supernode
    monkeypatch.setitem(sys.modules, "client.agent.supernode", fake)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    base = ["agent", "join", "--dir", agent.root, "--root-certificates", ca]
    status, _, _ = run_cli([*base, "--superlink", "127.0.0.1:9092", "--", "--max-retries", "1"])
    assert status == 7
    assert calls == [(agent.root, "127.0.0.1:9092", ca, ["--max-retries", "1"])]
    assert agent.load().superlink == "127.0.0.1:9092"
    status, _, err = run_cli([*base, "--superlink", "https://example.org"])
    assert status == 2 and "HOST:PORT" in err
    missing = ["agent", "join", "--dir", agent.root, "--root-certificates", tmp_path / "no.pem"]
    status, _, err = run_cli([*missing, "--superlink", "example.org:9092"])
    assert status == 2 and "no.pem" in err
    status, _, err = run_cli([*base, "--superlink", "example.org:9092", "--", "--insecure"])
    assert status == 2 and "TLS" in err
    status, _, err = run_cli([*base, "--superlink", "example.org:9092", "--", "--node-config"])
    assert status == 2 and "--node-config cannot be passed" in err and "Traceback" not in err
    assert len(calls) == 1


_STUBBORN_CHILD = """
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", (
    "import signal, sys, time\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "print('ready', flush=True)\\n"
    "time.sleep(120)\\n"
)], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_join_stops_what_the_supernode_left_in_its_process_group() -> None:
    """The SuperNode's leftovers: a child that ignores SIGTERM and outlives its parent
    (a ClientApp retrying a Runtime API that is gone) is killed after the grace time."""
    import subprocess

    from client.agent.supernode import stop_process_group

    leader = subprocess.Popen(
        [sys.executable, "-c", _STUBBORN_CHILD], stdout=subprocess.PIPE, text=True, process_group=0
    )
    orphan = int(leader.stdout.readline())
    assert leader.wait(timeout=30) == 0
    assert procfs.alive(orphan)  # its parent is gone, it is not
    stop_process_group(leader.pid, grace_s=0.5)
    deadline = time.monotonic() + 10
    while procfs.alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not procfs.alive(orphan)
    stop_process_group(leader.pid, grace_s=0.5)  # an empty group: returns at once
