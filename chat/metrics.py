"""Every Prometheus metric of the chat, declared once, and the text a scrape reads.

The rest of the code calls the small functions below (or a metric's own
``inc``/``set``); nothing else declares a metric. Hot paths pay one counter
update per event, not per socket where a count per batch says the same: a
room broadcast adds the number of tabs it went to, once.

Labels are bounded: outcomes, error codes and frame kinds are closed sets
declared here, never a room name, an ``author_id`` or anything a visitor
chooses.

**Several processes.** With ``PROMETHEUS_MULTIPROC_DIR`` set (a directory
shared by the server processes of one host, made if missing, emptied when
the host boots: README "Metrics"), prometheus-client keeps every value in
memory-mapped files there, one set per process, and a scrape of any
process reads and sums them all (``multiprocess.MultiProcessCollector``).
Counters and histograms add up; each gauge says how it aggregates
(``multiprocess_mode``): open sockets are summed over the live processes
(``livesum``), the layer probe is the worst live process's (``livemin``).
A dead process's live-gauge files are removed at each scrape
(``sweep_dead_processes``, prometheus-client's ``mark_process_dead`` for
every pid with no running process), and by a process that starts with the
pid of an earlier one, before it declares anything. Its counters stay: a
counter that went down would read as a reset. Without the variable each
process has its own registry, and each is scraped on its own (the compose
replicas: one process each).
"""

import glob
import os
import re
from collections.abc import Iterable

# An empty PROMETHEUS_MULTIPROC_DIR (compose's "${PROMETHEUS_MULTIPROC_DIR:-}")
# means unset: prometheus-client checks only that the name is present, and
# would write its files to the working directory. Before its import, which
# picks the kind of value once (prometheus_client/values.py get_value_class).
if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == "":
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

from chat import protocol

# No "_created" series (each counter's creation time): multiprocess mode has
# none, and a scrape reads the same in both modes.
disable_created_metrics()

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)
    # Live gauges left by an earlier process with this pid (a restarted
    # container's server is often pid 1 again) would be read back as ours.
    multiprocess.mark_process_dead(os.getpid(), MULTIPROC_DIR)

# --- The label values (closed sets) ----------------------------------------------------

# How a socket's connect ended (close codes: docs/protocol.md).
CONNECT_OUTCOMES = ("accepted", "no_session", "too_many", "unavailable", "blocked")
# The contract's error codes (declared in chat.protocol): what a rejected frame is answered.
FRAME_ERROR_CODES = tuple(sorted(protocol.ERROR_CODES))
# What the hub writes to its tabs: room frames (chat, renamed, deleted) and presence frames.
DELIVERY_KINDS = ("room", "presence")

# --- The metrics ------------------------------------------------------------------------

SOCKETS_OPEN = Gauge(
    "chat_sockets_open",
    "Chat sockets open: tabs the room hub delivers to (summed over live processes).",
    multiprocess_mode="livesum",
)
CONNECTS = Counter(
    "chat_connects",
    "Socket connects by outcome: accepted, no_session (closed 4401), too_many (4429), "
    "unavailable (1013: database, Redis or channel layer down), blocked (4403).",
    ["outcome"],
)
FRAMES_REJECTED = Counter(
    "chat_frames_rejected",
    "Client frames answered with an error frame, by the contract's error code.",
    ["code"],
)
DELIVERIES = Counter(
    "chat_deliveries",
    "Frames the room hub handed to sockets (a room broadcast counts once per tab it went to).",
    ["kind"],
)
MESSAGES_STORED = Counter(
    "chat_messages_stored",
    "Chat messages stored (a resent client_id, answered with the stored message, is not counted).",
)
STORE_BATCH_SIZE = Histogram(
    "chat_store_batch_size",
    "Chat messages per storing transaction (chat/writer.py: what arrived while the last batch was stored).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
SLOW_READERS_DROPPED = Counter(
    "chat_slow_readers_dropped",
    "Sockets dropped because their client stopped reading (over CHAT_SEND_BUFFER_LIMIT queued).",
)
LAYER_DELIVERING = Gauge(
    "chat_layer_delivering",
    "1 while the channel layer delivers the hub's probes, 0 while it does not "
    "(the lowest of the live processes; a process without sockets does not probe).",
    multiprocess_mode="livemin",
)
PRESENCE_ROOMS = Gauge(
    "chat_presence_rooms",
    "Rooms with an open socket, counted on each process (summed over live processes: "
    "a room open on two processes counts twice).",
    multiprocess_mode="livesum",
)
PRESENCE_LARGEST_ROOM = Gauge(
    "chat_presence_largest_room_people",
    "People (distinct identities, across processes) in the largest room this process serves "
    "(the largest over live processes).",
    multiprocess_mode="livemax",
)

# Every label value exists from the start (at 0), so a rate() sees its first event.
for _outcome in CONNECT_OUTCOMES:
    CONNECTS.labels(_outcome)
for _code in FRAME_ERROR_CODES:
    FRAMES_REJECTED.labels(_code)
for _kind in DELIVERY_KINDS:
    DELIVERIES.labels(_kind)
LAYER_DELIVERING.set(1)  # until a probe says otherwise (no Redis: the in-process layer always delivers)

# --- Recording ------------------------------------------------------------------------


def connect_ended(outcome: str) -> None:
    """Count a socket's connect by how it ended (one of ``CONNECT_OUTCOMES``)."""
    CONNECTS.labels(outcome).inc()


def frame_rejected(code: str) -> None:
    """Count a frame answered with an error frame (``code``: one of ``FRAME_ERROR_CODES``)."""
    FRAMES_REJECTED.labels(code).inc()


def delivered(kind: str, sockets: int) -> None:
    """Count one frame handed to ``sockets`` sockets (``kind``: one of ``DELIVERY_KINDS``)."""
    if sockets:
        DELIVERIES.labels(kind).inc(sockets)


def batch_stored(*, posts: int, created: int) -> None:
    """Count one storing transaction of ``posts`` chat frames, ``created`` of them new messages."""
    STORE_BATCH_SIZE.observe(posts)
    if created:
        MESSAGES_STORED.inc(created)


def presence_seen(counts: Iterable[int]) -> None:
    """Record the people counts of the rooms this process serves (one per room)."""
    rooms = largest = 0
    for count in counts:
        rooms += 1
        largest = max(largest, count)
    PRESENCE_ROOMS.set(rooms)
    PRESENCE_LARGEST_ROOM.set(largest)


# --- The scrape -----------------------------------------------------------------------

_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


def sweep_dead_processes(path: str) -> None:
    """Remove the live-gauge files of every process that no longer runs (``mark_process_dead``).

    Processes started one by one (systemd units, a supervisor) have no
    parent to report a death, as gunicorn's ``child_exit`` does in
    prometheus-client's docs; so each scrape looks. The pids are this host's
    (the directory must not be shared across containers or hosts).
    """
    me = os.getpid()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        found = _LIVE_GAUGE_FILE.fullmatch(os.path.basename(name))
        if found is None or int(found.group(1)) == me:
            continue
        pid = int(found.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)
        except PermissionError:
            pass  # alive, another user's


def exposition(accept: str = "") -> tuple[bytes, str]:
    """Return the scrape's body and its content type, in the format the ``Accept`` header asks for.

    Prometheus's text format 0.0.4 unless the scraper asks for a later one
    or for OpenMetrics (prometheus-client's own negotiation). With
    ``PROMETHEUS_MULTIPROC_DIR``, every process's values summed as each
    metric says; otherwise this process's registry (with the ``process_``
    and ``python_`` metrics of prometheus-client's default collectors).
    """
    encode, content_type = choose_encoder(accept)
    if MULTIPROC_DIR:
        sweep_dead_processes(MULTIPROC_DIR)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
        return encode(registry), content_type
    return encode(REGISTRY), content_type
