"""Reading a room's messages: newest page, older pages, catching up."""

import uuid

import pytest

from chat import moderation, selectors, services
from chat.identity import Identity, author_id_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def posted_ids() -> list[int]:
    sid = uuid.uuid4()
    ada = Identity(sid, author_id_for(sid), "Ada", False)
    services.post_message(identity=ada, room="other", text="elsewhere", client_id=None)
    return [
        services.post_message(identity=ada, room="lobby", text=str(n), client_id=None).message.pk for n in range(120)
    ]


def test_latest_messages_are_the_newest_oldest_first(posted_ids, data_queries):
    with data_queries() as queries:
        page = selectors.latest_messages(room="lobby")
    assert [m.pk for m in page] == posted_ids[-50:]
    assert queries.count == 1


def test_messages_before_pages_without_gaps(posted_ids, data_queries):
    seen: list[int] = []
    before = None
    while True:
        with data_queries() as queries:
            page, has_more = selectors.messages_before(room="lobby", before=before, limit=50)
        assert queries.count == 1
        seen = [m.pk for m in page] + seen
        if not has_more:
            break
        before = page[0].pk
    assert seen == posted_ids


def test_messages_after(posted_ids):
    page, has_more = selectors.messages_after(room="lobby", after=posted_ids[9], limit=100)
    assert [m.pk for m in page] == posted_ids[10:110] and has_more
    page, has_more = selectors.messages_after(room="lobby", after=posted_ids[-3], limit=100)
    assert [m.pk for m in page] == posted_ids[-2:] and not has_more


def test_last_message_id(posted_ids):
    assert selectors.last_message_id(room="lobby") == posted_ids[-1]
    assert selectors.last_message_id(room="empty") is None


@pytest.mark.redis  # the embedded default caches nothing (chatsite/settings.py)
@pytest.mark.django_db(transaction=True)
def test_the_newest_page_is_cached_until_the_room_changes(data_queries, admin_user):
    ada = Identity(uuid.uuid4(), "a" * 20, "Ada", False)
    first = [
        services.post_message(identity=ada, room="cached", text=f"m{n}", client_id=None).message.pk for n in range(3)
    ]
    with data_queries() as cold:
        assert [m.pk for m in selectors.latest_messages(room="cached")] == first
    with data_queries() as warm:
        page, has_more = selectors.messages_before(room="cached", before=None, limit=2)
    assert (cold.count, warm.count) == (1, 0)  # the second read is the cache's
    assert ([m.pk for m in page], has_more) == (first[1:], True)
    # A message stored, then one deleted: each is in the next page at once.
    later = services.post_message(identity=ada, room="cached", text="later", client_id=None).message.pk
    assert [m.pk for m in selectors.latest_messages(room="cached")] == [*first, later]
    moderation.delete_messages(ids=[first[0]], by=admin_user, via="test")
    assert [m.pk for m in selectors.latest_messages(room="cached")] == [first[1], first[2], later]
    assert selectors.messages_before(room="other", before=None, limit=50) == ([], False)
