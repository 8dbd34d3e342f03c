"""Where a request comes from: the client's address and the network limits count it in (chat/addresses.py)."""

import pytest

from chat.addresses import UNKNOWN, network


@pytest.mark.parametrize(
    ("address", "counted_as"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::9", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("fe80::1%eth0", "fe80::/64"),
        # loopback: not counted
        ("127.0.0.1", None),
        ("127.255.0.9", None),
        ("::1", None),
        ("::ffff:127.0.0.1", None),
        # missing, untrusted (client_address gave None) or not an address: one shared count
        (None, UNKNOWN),
        ("", UNKNOWN),
        ("unknown", UNKNOWN),
        ("203.0.113.7, 10.0.0.1", UNKNOWN),
    ],
)
def test_the_network_of_an_address(address, counted_as):
    assert network(address) == counted_as
