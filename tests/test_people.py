"""What changed between two listed-people reports."""

from chat.realtime.people import Person, diff

ADA = Person("a" * 20, "Ada", False, 1)
GRACE = Person("g" * 20, "Grace", True, 1)


def test_diff_names_who_joined_changed_and_left():
    changes = diff((ADA, GRACE), (Person(ADA.author_id, "Ada L.", False, 2),), count=7)
    assert changes.count == 7
    assert changes.joined == (Person(ADA.author_id, "Ada L.", False, 2),)
    assert changes.left == (GRACE.author_id,)
    assert changes


def test_the_same_list_is_no_change():
    assert not diff((ADA, GRACE), (ADA, GRACE), count=2)
