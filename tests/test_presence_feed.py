"""One room's presence for this process's tabs: a snapshot, then merged diffs at most once a second."""

import json

from chat.realtime.people import Person, RoomPeople
from chat.realtime.presence_feed import PRESENCE_INTERVAL, PresenceFeed

ADA = Person("a" * 20, "Ada", False, 1)
GRACE = Person("g" * 20, "Grace", True, 1)
LIN = Person("l" * 20, "Lin", False, 1)


def sent(feed: PresenceFeed, now: float) -> list[tuple[list[str], dict]]:
    return [(sorted(tabs), json.loads(frame)) for tabs, frame in feed.due(now)]


def test_a_tab_gets_a_snapshot_then_one_merged_diff_per_second():
    feed = PresenceFeed("lobby")
    snapshot = json.loads(feed.snapshot("t1", RoomPeople(1, 1, 1, (ADA,)), now=0.0))
    assert snapshot == {
        "type": "presence",
        "room": "lobby",
        "count": 1,
        "users": [{"author_id": ADA.author_id, "username": "Ada", "verified": False, "tabs": 1}],
    }
    feed.learn(RoomPeople(2, 2, 2, (ADA, GRACE)))
    assert sent(feed, 0.5) == []  # too soon after the snapshot
    feed.learn(RoomPeople(3, 3, 3, (ADA, GRACE, LIN)))
    feed.learn(RoomPeople(4, 2, 4, (GRACE, LIN)))
    [(tabs, frame)] = sent(feed, PRESENCE_INTERVAL)
    assert tabs == ["t1"]
    assert frame == {
        "type": "presence_diff",
        "room": "lobby",
        "count": 2,
        "joined": [
            {"author_id": GRACE.author_id, "username": "Grace", "verified": True, "tabs": 1},
            {"author_id": LIN.author_id, "username": "Lin", "verified": False, "tabs": 1},
        ],
        "left": [ADA.author_id],
    }
    assert sent(feed, 5.0) == []  # nothing changed since


def test_tabs_showing_the_same_list_share_one_frame():
    feed = PresenceFeed("lobby")
    first = RoomPeople(1, 1, 1, (ADA,))
    for tab in ("t1", "t2", "t3"):
        feed.snapshot(tab, first, now=0.0)
    feed.learn(RoomPeople(2, 150, 1, None))  # 149 more people, none of them listed
    [(tabs, frame)] = sent(feed, 1.0)
    assert tabs == ["t1", "t2", "t3"]
    assert frame == {"type": "presence_diff", "room": "lobby", "count": 150, "joined": [], "left": []}


def test_a_change_undone_before_it_was_sent_sends_nothing():
    feed = PresenceFeed("lobby")
    feed.snapshot("t1", RoomPeople(1, 1, 1, (ADA,)), now=0.0)
    feed.learn(RoomPeople(2, 2, 2, (ADA, GRACE)))
    feed.learn(RoomPeople(3, 1, 3, (ADA,)))
    assert sent(feed, 2.0) == []


def test_an_older_report_does_not_undo_a_newer_one():
    feed = PresenceFeed("lobby")
    feed.snapshot("t1", RoomPeople(5, 2, 5, (ADA, GRACE)), now=0.0)
    feed.learn(RoomPeople(4, 1, 4, (ADA,)))  # a read that left Redis before the newer entry
    assert (feed.version, feed.count) == (5, 2)
    assert sent(feed, 2.0) == []


def test_a_forgotten_tab_is_sent_nothing():
    feed = PresenceFeed("lobby")
    feed.snapshot("t1", RoomPeople(1, 1, 1, (ADA,)), now=0.0)
    feed.forget("t1")
    feed.learn(RoomPeople(2, 2, 2, (ADA, GRACE)))
    assert sent(feed, 2.0) == []


def test_a_room_of_thousands_here_is_sent_its_diffs_less_often(monkeypatch):
    from chat.realtime import presence_feed

    monkeypatch.setattr(presence_feed, "PRESENCE_FRAMES_PER_SECOND", 2)
    feed = PresenceFeed("lobby")
    for tab in ("t1", "t2", "t3", "t4"):  # 4 tabs at 2 frames a second: each every 2 s
        feed.snapshot(tab, RoomPeople(1, 1, 1, (ADA,)), now=0.0)
    assert feed.interval() == 2.0
    feed.learn(RoomPeople(2, 2, 1, None))
    assert sent(feed, 1.5) == []
    [(tabs, frame)] = sent(feed, 2.0)
    assert tabs == ["t1", "t2", "t3", "t4"] and frame["count"] == 2
