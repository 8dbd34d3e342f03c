"""Metrics (chat/metrics.py) and their endpoint (chat/metrics_endpoint.py).

Each metric moves when its event happens, through the real consumer and hub
(in process) or a real server (the slow reader, several processes). The
endpoint refuses anyone but the operator's scraper, answers whatever the
``Host``, and creates no session.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from django.contrib.sessions.models import Session
from django.db import OperationalError
from django.test import Client
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from chat import metrics, services
from chat.identity import author_id_for
from chat.models import Block
from chat.realtime.probe import LayerProbe
from tests.conftest import make_session
from tests.servers import ROOT, Server, manage, recv
from tests.tabs import TIMEOUT, Tab, new_browser, open_tab

TOKEN = "scrape-token-for-tests"


def value(name: str, **labels: str) -> float:
    """This process's current value of a sample (0 when it has none yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of a sample in a scrape's text, or None."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


async def until(check, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the metric did not move in time"
        await asyncio.sleep(0.05)


# --- Each metric moves with its event (the consumer and hub, in process) -------------


@pytest.mark.django_db(transaction=True)
async def test_a_connect_counts_accepted_and_an_open_socket_until_it_closes():
    accepted, open_before = value("chat_connects_total", outcome="accepted"), value("chat_sockets_open")
    tab = await open_tab(await new_browser())
    assert value("chat_connects_total", outcome="accepted") == accepted + 1
    assert value("chat_sockets_open") == open_before + 1
    await tab.close()
    await until(lambda: value("chat_sockets_open") == open_before)


@pytest.mark.django_db(transaction=True)
async def test_a_connect_of_a_blocked_browser_counts_blocked():
    session = await database_sync_to_async(make_session)()
    author_id = author_id_for(uuid.UUID(session["session_id"]))
    await database_sync_to_async(Block.objects.create)(author_id=author_id)
    before, open_before = value("chat_connects_total", outcome="blocked"), value("chat_sockets_open")
    tab = Tab(session.session_key)
    await tab.comm.connect(timeout=TIMEOUT)
    assert await tab.comm.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4403}
    assert value("chat_connects_total", outcome="blocked") == before + 1
    assert value("chat_sockets_open") == open_before
    await tab.comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_connect_without_a_session_counts_no_session():
    before = value("chat_connects_total", outcome="no_session")
    open_before = value("chat_sockets_open")
    tab = Tab(None)
    await tab.comm.connect(timeout=TIMEOUT)
    assert await tab.comm.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4401}
    assert value("chat_connects_total", outcome="no_session") == before + 1
    assert value("chat_sockets_open") == open_before
    await tab.comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_socket_over_the_cap_counts_too_many(settings):
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 1
    key = await new_browser()
    first = await open_tab(key)
    before, open_before = value("chat_connects_total", outcome="too_many"), value("chat_sockets_open")
    extra = Tab(key)
    await extra.comm.connect(timeout=TIMEOUT)
    closed = await extra.comm.receive_output(timeout=TIMEOUT)
    assert closed["code"] == 4429
    assert value("chat_connects_total", outcome="too_many") == before + 1
    assert value("chat_sockets_open") == open_before  # counted while it was checked, not after
    await extra.comm.disconnect()
    await first.close()


@pytest.mark.django_db(transaction=True)
async def test_a_connect_with_the_database_down_counts_unavailable(monkeypatch):
    key = await new_browser()

    def database_down(**kwargs):
        raise OperationalError("connection to server failed")

    monkeypatch.setattr(services, "resolve_socket", database_down)
    before = value("chat_connects_total", outcome="unavailable")
    tab = Tab(key)
    await tab.comm.connect(timeout=TIMEOUT)
    assert (await tab.comm.receive_output(timeout=TIMEOUT))["code"] == 1013
    assert value("chat_connects_total", outcome="unavailable") == before + 1
    await tab.comm.disconnect()


def test_every_outcome_and_error_code_is_there_from_the_start_blocked_included():
    for outcome in ("accepted", "no_session", "too_many", "unavailable", "blocked"):
        assert REGISTRY.get_sample_value("chat_connects_total", {"outcome": outcome}) is not None
    for code in metrics.FRAME_ERROR_CODES:
        assert REGISTRY.get_sample_value("chat_frames_rejected_total", {"code": code}) is not None


@pytest.mark.django_db(transaction=True)
async def test_a_rejected_frame_counts_its_error_code():
    tab = await open_tab(await new_browser())
    await tab.quiet()
    for frame, code in [
        ("{not json", "bad_json"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "resume"}, "invalid_request"),
    ]:
        before = value("chat_frames_rejected_total", code=code)
        await tab.send(frame)
        assert (await tab.recv_type("error"))["code"] == code
        assert value("chat_frames_rejected_total", code=code) == before + 1
    await tab.close()


@pytest.mark.django_db(transaction=True)
async def test_a_stored_message_counts_once_with_its_batch_and_its_deliveries():
    ada = await open_tab(await new_browser())
    grace = await open_tab(await new_browser())
    stored, batches = value("chat_messages_stored_total"), value("chat_store_batch_size_count")
    delivered = value("chat_deliveries_total", kind="room")
    await ada.send({"type": "chat", "text": "counted", "client_id": "c1"})
    await ada.recv_type("chat")
    await grace.recv_type("chat")
    # Counted when the writer has the batch back, which may be just after the echo.
    await until(lambda: value("chat_messages_stored_total") == stored + 1)
    assert value("chat_store_batch_size_count") == batches + 1
    assert value("chat_deliveries_total", kind="room") == delivered + 2  # one frame, two tabs
    # A resend stores nothing new: a batch, no message.
    await ada.send({"type": "chat", "text": "counted", "client_id": "c1"})
    await ada.recv_type("chat")
    await until(lambda: value("chat_store_batch_size_count") == batches + 2)
    assert value("chat_messages_stored_total") == stored + 1
    await ada.close()
    await grace.close()


@pytest.mark.django_db(transaction=True)
async def test_presence_sizes_follow_the_rooms_of_the_process():
    ada, grace = await new_browser(), await new_browser()
    tabs = [await open_tab(ada, "metrics-a"), await open_tab(grace, "metrics-a"), await open_tab(ada, "metrics-b")]
    await until(
        lambda: value("chat_presence_rooms") == 2 and value("chat_presence_largest_room_people") == 2, timeout=5
    )
    for tab in tabs:
        await tab.close()
    await until(lambda: value("chat_presence_rooms") == 0 and value("chat_presence_largest_room_people") == 0)


async def test_the_layer_probe_state_is_a_gauge():
    probe = LayerProbe(layer=None, channel="probe-test", on_back=None)  # type: ignore[arg-type]
    assert value("chat_layer_delivering") == 1
    probe.delivering = False
    assert value("chat_layer_delivering") == 0
    probe.delivering = True
    assert value("chat_layer_delivering") == 1


# --- The endpoint ------------------------------------------------------------------------


@pytest.fixture
def scrape_client() -> Client:
    return Client()


@pytest.mark.django_db
def test_without_a_token_only_loopback_may_scrape(scrape_client, settings):
    settings.METRICS_TOKEN = ""
    ok = scrape_client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert ok.status_code == 200
    assert ok["Content-Type"].startswith("text/plain")
    assert b"# HELP chat_sockets_open " in ok.content
    assert scrape_client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert scrape_client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    # Through a proxy (or claiming to be), the address is a header's: refused without the token.
    assert scrape_client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 403


@pytest.mark.django_db
def test_an_allow_list_names_the_networks_that_may_scrape(scrape_client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOW = ["10.0.0.0/8", "fd00::/8"]
    assert scrape_client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert scrape_client.get("/metrics", REMOTE_ADDR="fd00::5").status_code == 200
    assert scrape_client.get("/metrics", REMOTE_ADDR="192.168.1.1").status_code == 403
    assert scrape_client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403  # not listed


@pytest.mark.django_db
def test_with_a_token_a_scrape_needs_it_from_any_address(scrape_client, settings):
    settings.METRICS_TOKEN = TOKEN
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": TOKEN}):
        assert scrape_client.get("/metrics", REMOTE_ADDR="127.0.0.1", **headers).status_code == 403, headers
    good = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    assert scrape_client.get("/metrics", REMOTE_ADDR="203.0.113.7", **good).status_code == 200
    assert (
        scrape_client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="1.2.3.4", **good).status_code
        == 200
    )
    # With an allow-list too, both must hold.
    settings.METRICS_ALLOW = ["10.0.0.0/8"]
    assert scrape_client.get("/metrics", REMOTE_ADDR="10.0.0.9", **good).status_code == 200
    assert scrape_client.get("/metrics", REMOTE_ADDR="203.0.113.7", **good).status_code == 403
    assert scrape_client.post("/metrics", REMOTE_ADDR="10.0.0.9", **good).status_code == 405


@pytest.mark.django_db
def test_a_scrape_answers_whatever_the_host_over_plain_http_and_creates_no_session(scrape_client, settings, caplog):
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    settings.SECURE_SSL_REDIRECT = True  # production's default: pages redirect, the scrape does not
    sessions = Session.objects.count()
    with caplog.at_level("WARNING"):
        response = scrape_client.get("/metrics", HTTP_HOST="10.0.0.5:8000", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    assert not response.cookies
    assert Session.objects.count() == sessions
    assert "DisallowedHost" not in caplog.text
    refused = scrape_client.get("/metrics", HTTP_HOST="10.0.0.5:8000", REMOTE_ADDR="10.9.9.9")
    assert refused.status_code == 403 and not refused.cookies
    assert Session.objects.count() == sessions


def test_an_invalid_allow_list_stops_the_server_at_start(tmp_path):
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "METRICS_ALLOW": "10.0.0.0/8,not-a-network"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "METRICS_ALLOW" in done.stderr


# --- Several processes ----------------------------------------------------------------

WRITE_METRICS = """
import sys
from chat import metrics
metrics.connect_ended("accepted")
metrics.SOCKETS_OPEN.inc()
metrics.batch_stored(posts=int(sys.argv[1]), created=int(sys.argv[1]))
print(metrics.MULTIPROC_DIR)
"""


def run_python(code: str, *args: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_multiprocess_collector_sums_two_processes_and_forgets_the_dead_ones_sockets(tmp_path):
    directory = tmp_path / "metrics"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    assert run_python(WRITE_METRICS, "3", env=env, cwd=tmp_path) == str(directory)  # made by the first
    run_python(WRITE_METRICS, "5", env=env, cwd=tmp_path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    assert registry.get_sample_value("chat_connects_total", {"outcome": "accepted"}) == 2
    assert registry.get_sample_value("chat_messages_stored_total") == 8
    assert registry.get_sample_value("chat_store_batch_size_count") == 2
    assert registry.get_sample_value("chat_store_batch_size_bucket", {"le": "5.0"}) == 2
    assert registry.get_sample_value("chat_store_batch_size_bucket", {"le": "2.0"}) == 0
    # Both processes have ended: their open sockets are gone from the sum, their counts stay.
    assert registry.get_sample_value("chat_sockets_open") == 2  # their files are still there
    metrics.sweep_dead_processes(str(directory))
    assert registry.get_sample_value("chat_sockets_open") is None  # no live process holds one
    assert registry.get_sample_value("chat_connects_total", {"outcome": "accepted"}) == 2


def test_an_empty_multiproc_dir_means_one_process(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": ""}
    assert run_python(WRITE_METRICS, "1", env=env, cwd=tmp_path) == "None"
    assert list(tmp_path.iterdir()) == []  # no files written to the working directory


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
async def test_two_server_processes_are_scraped_as_one_and_a_killed_ones_sockets_leave(server_env, tmp_path):
    env = {**server_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "METRICS_TOKEN": TOKEN}
    one = Server(env, tmp_path / "one.log")
    two = Server(env, tmp_path / "two.log")
    try:
        async with one.ws(one.browser()) as ada, two.ws(two.browser()) as grace:
            await recv(ada, "welcome")
            await recv(grace, "welcome")
            await grace.send(json.dumps({"type": "chat", "text": "on two", "client_id": "g1"}))
            await recv(grace, "chat")
            for server in (one, two):  # either one answers for both
                text = scrape(server)
                assert sample(text, "chat_sockets_open") == 2
                assert sample(text, "chat_connects_total", outcome="accepted") == 2
                assert sample(text, "chat_messages_stored_total") == 1
            two.process.kill()  # SIGKILL: nothing of it runs to tidy up
            two.process.wait()
            text = scrape(one)
            assert sample(text, "chat_sockets_open") == 1
            assert sample(text, "chat_connects_total", outcome="accepted") == 2  # counts stay
            assert sample(text, "chat_messages_stored_total") == 1
    finally:
        one.stop()
        two.stop()


def scrape(server: Server, token: str = TOKEN) -> str:
    request = urllib.request.Request(f"{server.base}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
async def test_a_real_server_refuses_a_scrape_without_its_token(server_env, tmp_path):
    server = Server({**server_env, "METRICS_TOKEN": TOKEN}, tmp_path / "daphne.log")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(server, token="wrong")
        assert refused.value.code == 403
        assert sample(scrape(server), "chat_sockets_open") == 0
        assert "Bearer" not in server.log_path.read_text() and TOKEN not in server.log_path.read_text()
    finally:
        server.stop()


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
async def test_a_dropped_slow_reader_is_counted(server_env, tmp_path):
    from tests.test_server import SEED_LONG_MESSAGES, StalledClient

    env = {**server_env, "CHAT_SEND_BUFFER_LIMIT": "65536", "METRICS_TOKEN": TOKEN}
    manage(env, "shell", "-c", SEED_LONG_MESSAGES)
    server = Server(env, tmp_path / "daphne.log")
    try:
        assert sample(scrape(server), "chat_slow_readers_dropped_total") == 0
        stalled = StalledClient(server, server.browser("slow"), "slow")
        for _ in range(400):  # history pages of 100 long messages, never read
            if not await stalled.send({"type": "history", "limit": 100}):
                break
            await asyncio.sleep(0.05)
            if "slow reader dropped" in server.log_path.read_text(errors="replace"):
                break
        await stalled.read_to_end(timeout=15)
        assert sample(scrape(server), "chat_slow_readers_dropped_total") == 1
    finally:
        server.stop()
