"""The load benchmark (bench/) still measures: tiny runs against real servers, so it cannot rot unseen."""

import pytest

from bench import scenarios
from bench.scenarios import Load
from bench.servers import start_baseline, start_project
from bench.soak import Churn, _gaps, soak

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]

TINY = Load(clients=5, senders=2, rate=2.0, duration=1.0, drain=2.0, warmup=0.0, concurrency=5, procs=2)


@pytest.fixture
def project(server_env, tmp_path):
    """The project as the benchmark starts it (production settings), on this test's database."""
    target = start_project(log_dir=tmp_path, base_env=server_env, migrate=False)
    yield target
    target.stop()


def test_fanout_reports_every_delivery_with_its_latency(project):
    result = scenarios.fanout(project, TINY)

    step = result["steps"][0]
    assert result["connect"]["ok"] == 5
    assert step["sent"] == 2  # 2 messages/s for 1 s
    assert step["expected"] == step["delivered"] == 10  # each to all 5 clients, the sender's echo included
    assert step["delivered_pct"] == 100.0 and step["pass"]
    assert 0 < step["latency_ms"]["p50"] <= step["latency_ms"]["p99"] <= step["latency_ms"]["max"]
    assert step["server"]["rss_mb"] > 0 and step["errors"] == {}


def test_fanout_against_the_baseline(tmp_path):
    baseline = start_baseline(log_dir=tmp_path)
    try:
        step = scenarios.fanout(baseline, TINY)["steps"][0]
    finally:
        baseline.stop()
    assert step["expected"] == step["delivered"] == 10
    assert step["latency_ms"]["p99"] is not None


def test_connect_reports_rate_and_time_to_ready(project):
    connect = scenarios.connect(project, TINY)["connect"]

    assert connect["ok"] == 5 and connect["failed"] == 0
    assert connect["connects_per_s"] > 0
    assert 0 < connect["ready_ms"]["p50"] <= connect["ready_ms"]["p99"]


def test_soak_every_stored_message_reaches_every_client_across_reconnects(project):
    load = Load(clients=6, rate=3.0, drain=3.0, concurrency=6, procs=2)

    result = soak(project, load, Churn(minutes=0.1, flaky=0.5, reconnect_every=1.0))

    assert result["reconnects"] > 0  # the flaky half dropped and came back
    assert result["stored"] == result["sent"] > 0
    assert result["gaps"] == 0 and result["not_connected_at_end"] == 0
    assert result["received"] == 6 * result["stored"]
    assert result["rss_series_mb"]


def test_soak_counts_a_stored_message_a_connected_client_never_got():
    clients = [
        {"flaky": False, "start_id": 0, "seen": [1, 2, 3], "duplicates": {}, "reconnects": 0, "sent": 3,
         "skipped": 0, "errors": {}, "connected_at_end": True},
        {"flaky": True, "start_id": 1, "seen": [3], "duplicates": {}, "reconnects": 2, "sent": 0,
         "skipped": 0, "errors": {}, "connected_at_end": True},  # joined after 1, missed 2
    ]

    found = _gaps(clients, stored=[1, 2, 3])

    assert found["gaps"] == 1 and found["clients_with_gaps"] == 1
    assert found["stored"] == 3 and found["received"] == 4
