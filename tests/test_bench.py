"""The load benchmark (bench/) still measures: tiny runs against real servers, so it cannot rot unseen."""

from contextlib import contextmanager

import pytest

from bench import scenarios
from bench.scenarios import Load
from bench.servers import Target, start_baseline, start_project, start_projects
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


@pytest.mark.redis
def test_scale_ramps_one_process_then_two_that_deliver_across_each_other(server_env, tmp_path):
    @contextmanager
    def start(count):
        targets = start_projects(count, log_dir=tmp_path, base_env=server_env, migrate=False)
        try:
            yield targets
        finally:
            for target in targets:
                target.stop()

    load = Load(clients=6, senders=2, rate=4.0, duration=0.5, drain=1.0, warmup=0.0, concurrency=6, procs=2,
                max_steps=2)

    result = scenarios.scale(start, load)

    one, two = result["runs"]["1"], result["runs"]["2"]
    assert [s["rate"] for s in one["steps"]] == [s["rate"] for s in two["steps"]] == [4.0, 6.0]
    assert "by_server" not in one["steps"][0]
    assert len({s["pid"] for s in two["servers"]}) == 2
    for step in two["steps"]:
        assert step["pass"] and step["delivered"] == step["expected"] == step["sent"] * 6
        assert len(step["server"]["processes"]) == 2  # each process's CPU, sampled on its own
        assert [(r["clients"], r["senders"]) for r in step["by_server"]] == [(3, 1), (3, 1)]
        for row in step["by_server"]:  # half of what each server's clients got came through the other process
            assert row["delivered"] == row["expected"] and row["messages_to_no_client"] == 0
            assert row["delivered_from_other_servers"] == row["expected_from_other_servers"] > 0
        assert step["every_message_on_every_server"]
    assert result["ratio"] == 1.0 and result["ended_without_failure"] == ["1", "2"]  # both passed both steps
    assert result["every_message_on_every_server"]["2"]["steps_every_message_on_every_server"] == 2


def test_by_server_counts_a_message_that_reached_no_client_of_one_server():
    servers = [Target("project", "127.0.0.1", 1), Target("project", "127.0.0.1", 2)]
    # One worker; senders 0 (on server 0) and 1 (on server 1) sent 2 messages each.
    answer = {"by_server": [
        {"clients": 2, "senders": 1, "sent": 2, "delivered": 8,
         "messages": {"0:0": 2, "0:1": 2, "1:0": 2, "1:1": 2}},
        {"clients": 2, "senders": 1, "sent": 2, "delivered": 5,
         "messages": {"0:0": 2, "1:0": 2, "1:1": 1}},  # 0:1 never crossed; one client missed 1:1
    ]}

    found = scenarios.by_server(servers, [answer])

    first, second = found["by_server"]
    assert first["expected"] == first["delivered"] == 8 and first["delivered_from_other_servers"] == 4
    assert second["expected"] == 8 and second["delivered"] == 5
    assert second["delivered_from_other_servers"] == 2 and second["expected_from_other_servers"] == 4
    assert second["messages_to_every_client"] == 2 and second["messages_to_no_client"] == 1
    assert not found["every_message_on_every_server"]
