"""The registry behind run-config choices: names in order, one entry each, clear errors."""

import pytest

from fedmodel.registry import Registry


def test_entries_come_back_by_name_and_names_keep_registration_order():
    registry: Registry[int] = Registry("widget")
    assert registry.register("b", 2) == 2
    registry.register("a", 1)
    assert registry.get("a") == 1 and registry.get("b") == 2
    assert registry.names() == ("b", "a") == tuple(registry)
    assert "a" in registry and "c" not in registry and len(registry) == 2


def test_an_unknown_name_lists_the_known_ones():
    registry: Registry[int] = Registry("widget")
    registry.register("b", 2)
    registry.register("a", 1)
    with pytest.raises(ValueError, match="^unknown widget 'c': must be one of b, a$"):
        registry.get("c")


def test_a_name_is_registered_once():
    registry: Registry[int] = Registry("widget")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.register("a", 2)
    assert registry.get("a") == 1
