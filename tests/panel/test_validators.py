import pytest
from django.core.exceptions import ValidationError

from panel.instances.validators import validate_hostname


@pytest.mark.parametrize("value,expected", [
    ("web1", "web1"), ("My-Box", "my-box"), ("a", "a"), ("x" * 63, "x" * 63), (" db-2 ", "db-2"),
])
def test_valid_hostnames_are_normalised(value, expected):
    assert validate_hostname(value) == expected


@pytest.mark.parametrize("value", [
    "", "   ", "-web", "web-", "we_b", "web.example", "x" * 64, "héllo", "12345", "a b", "web;rm",
])
def test_invalid_hostnames_are_refused_with_a_message(value):
    with pytest.raises(ValidationError) as exc:
        validate_hostname(value)
    assert exc.value.messages[0]
