"""The load benchmark (bench/) still measures: tiny runs against real servers, so it cannot rot unseen."""

import asyncio
from contextlib import contextmanager

import pytest

from bench import scenarios
from bench.bigroom import bigroom, by_room_size, by_second
from bench.evader import phase
from bench.scenarios import Load
from bench.servers import Target, start_baseline, start_project, start_projects
from bench.soak import Churn, _gaps, soak
from bench.storm import back_figures, backoff_delay, storm

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
        {
            "flaky": False,
            "start_id": 0,
            "seen": [1, 2, 3],
            "duplicates": {},
            "reconnects": 0,
            "sent": 3,
            "skipped": 0,
            "errors": {},
            "connected_at_end": True,
        },
        {
            "flaky": True,
            "start_id": 1,
            "seen": [3],
            "duplicates": {},
            "reconnects": 2,
            "sent": 0,
            "skipped": 0,
            "errors": {},
            "connected_at_end": True,
        },  # joined after 1, missed 2
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

    load = Load(
        clients=6, senders=2, rate=4.0, duration=0.5, drain=1.0, warmup=0.0, concurrency=6, procs=2, max_steps=2
    )

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
    answer = {
        "by_server": [
            {
                "clients": 2,
                "senders": 1,
                "sent": 2,
                "delivered": 8,
                "messages": {"0:0": 2, "0:1": 2, "1:0": 2, "1:1": 2},
            },
            {
                "clients": 2,
                "senders": 1,
                "sent": 2,
                "delivered": 5,
                "messages": {"0:0": 2, "1:0": 2, "1:1": 1},
            },  # 0:1 never crossed; one client missed 1:1
        ]
    }

    found = scenarios.by_server(servers, [answer])

    first, second = found["by_server"]
    assert first["expected"] == first["delivered"] == 8 and first["delivered_from_other_servers"] == 4
    assert second["expected"] == 8 and second["delivered"] == 5
    assert second["delivered_from_other_servers"] == 2 and second["expected_from_other_servers"] == 4
    assert second["messages_to_every_client"] == 2 and second["messages_to_no_client"] == 1
    assert not found["every_message_on_every_server"]


def test_bigroom_reports_joins_memory_presence_and_delivery(project):
    load = Load(clients=20, senders=2, rate=2.0, duration=1.0, drain=2.0, warmup=0.0, concurrency=10, procs=2)

    result = bigroom(project, load, settle=2.5)

    connect, presence, memory, chat = result["connect"], result["presence"], result["memory"], result["chat"]
    assert connect["ok"] == 20 and connect["failed"] == 0 and connect["connects_per_s"] > 0
    assert connect["wall_s"] > 0 and result["server_series"]  # sampled while they joined
    # Every tab got one snapshot (no more than 100 people listed), then diffs, at most one a second.
    assert presence["snapshots"] == 20 and 0 < presence["snapshot_users_max"] <= 20
    assert presence["snapshot_bytes_max"] >= presence["snapshot_bytes_mean"] > 0
    assert presence["diffs"] > 0 and presence["diff_bytes"] > 0
    # The server spaces them by a second; as received, a loaded machine may bring two a little closer.
    assert presence["diff_gap_min_s"] is None or presence["diff_gap_min_s"] > 0.5
    assert presence["after_joins"]["bytes_per_client_s"] is not None
    assert presence["by_second"] and len(presence["by_room_size"]) == 4
    # Once the room settled, every tab shows the whole room.
    assert presence["last_count"] == {
        "expected": 20,
        "matching": 20,
        "none": 0,
        "min": 20,
        "max": 20,
        "values": {"20": 20},
    }
    assert memory["rss_before_mb"] > 0 and memory["rss_peak_mb"] >= memory["rss_held_mb"] > 0
    assert memory["kb_per_socket"] is not None and memory["rss_after_mb"] > 0
    assert len(result["client"]["rss_mb"]) == 2
    assert chat["sent"] == 2 and chat["expected"] == chat["delivered"] == 40 and chat["pass"]
    assert 0 < chat["latency_ms"]["p50"] <= chat["latency_ms"]["p99"]


def test_bigroom_presence_by_second_and_by_room_size():
    # Two workers: welcomes in seconds 100 and 101, diff bytes in 100-102.
    answers = [
        {"by_second": {100: 0, 101: 300, 102: 400}, "welcomes": {100: 2, 101: 2}},
        {"by_second": {101: 300, 102: 400}, "welcomes": {100: 2, 101: 2}},
    ]

    rows = by_second(answers, start=100.2, end=102.5)

    assert rows == [[0, 4, 0.0], [1, 8, 75.0], [2, 8, 100.0]]
    assert by_room_size(rows, 8, parts=2) == [
        {"room_size": "1-4", "seconds": 1, "bytes_per_client_s": 0.0},
        {"room_size": "5-8", "seconds": 2, "bytes_per_client_s": 87.5},
    ]


def test_storm_after_a_restart_every_tab_comes_back_and_misses_nothing(project):
    load = Load(clients=20, senders=2, rate=2.0, duration=2.0, drain=2.0, concurrency=10, procs=2)
    first_pid = project.pid

    result = storm(project, load, cause="restart", backoff="jitter", timeout=30)

    assert project.pid != first_pid  # a new process on the same port
    assert result["restart"]["up_s"] > 0
    assert result["dropped"] == result["back"] == 20 and result["not_back"] == 0
    assert 0 < result["back_s"]["p50"] <= result["all_back_s"] < 30
    assert result["reconnects_per_s"] > 0 and result["attempts"] >= 20
    assert sum(n for _, n in result["back_by_second"]) == 20
    messages = result["messages"]
    assert messages["stored"] > 0 and messages["gaps"] == 0 and messages["not_connected_at_end"] == 0
    assert messages["received"] == 20 * messages["stored"]  # all joined before the first was sent
    # Each sender's first, a second before the restart (its second is due at the restart itself).
    assert 2 <= messages["sent_before_storm"] <= 4
    assert messages["sent"] > 2 and messages["sent_not_stored"] == 0  # the browser resends what got no echo


def test_storm_drop_without_backoff(project):
    load = Load(clients=20, senders=2, rate=2.0, duration=2.0, drain=2.0, concurrency=10, procs=2)

    result = storm(project, load, cause="drop", backoff="none", timeout=30)

    assert "restart" not in result
    assert result["dropped"] == result["back"] == 20 and result["all_back_s"] is not None
    messages = result["messages"]
    assert messages["gaps"] == 0 and messages["received"] == 20 * messages["stored"] > 0
    assert messages["sent_not_stored"] == 0


def test_storm_backoff_and_figures_without_a_server():
    assert backoff_delay("none", 1, 0.1) == 0.0 and backoff_delay("none", 5, 0.1) == 0.1
    assert all(0 <= backoff_delay("jitter", 1, 0.1) < 1.0 for _ in range(100))  # chat.js: 500 ms * 2^1
    assert all(0 <= backoff_delay("jitter", 10, 0.1) < 15.0 for _ in range(100))  # capped at 15 s
    clients = [
        {"down_s": 0.0, "back_s": 0.4, "attempts": 1, "failures": {}},
        {"down_s": 0.0, "back_s": 1.6, "attempts": 3, "failures": {"timeout": 2}},
        {"down_s": 0.0, "back_s": None, "attempts": 4, "failures": {"timeout": 4}},
        {"down_s": None, "back_s": None, "attempts": 0, "failures": {}},
    ]

    found = back_figures(clients, {"stop_s": 0.1, "start_s": 0.5, "up_s": 0.6})

    assert (found["dropped"], found["back"], found["not_back"], found["never_dropped"]) == (3, 2, 1, 1)
    assert found["all_back_s"] is None  # one never came back
    assert found["back_s"]["max"] == 1.6 and found["back_by_second"] == [[0, 1], [1, 1]]
    assert found["failed_attempts"] == 6 and found["attempts"] == 8 and found["attempts_max"] == 4
    assert found["all_back_after_server_up_s"] is None and found["reconnects_per_s_after_server_up"] == 2.0


def test_evader_gets_its_burst_of_identities_then_429(server_env, tmp_path):
    env = {**server_env, "CHAT_NEW_IDENTITY_RATE_BURST": "2"}
    target = start_project(
        log_dir=tmp_path, base_env=env, extra_env={"BEHIND_PROXY": "1"}, args=["--proxy-headers"], migrate=False
    )
    try:
        result = asyncio.run(phase(target, seconds=2.0, pause=0.5))
    finally:
        target.stop()
    assert result["identities obtained"] == 2 and result["pages refused (429)"] >= 2
    assert result["messages acknowledged"] == result["messages seen by the reader"] == 20
    assert result["messages stored (rows)"] == 20
    assert 0 < result["retry_after s (min, max)"][0] <= 60
