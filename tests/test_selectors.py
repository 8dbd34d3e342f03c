"""Reading a room's messages: newest page, older pages, catching up."""

import uuid

import pytest

from chat import selectors, services
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
