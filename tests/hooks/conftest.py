from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest

from imgpipe import Item, make_plugin_manager


@pytest.fixture
def pm():
    """A fresh manager with the built-in stages only: no installed plugin leaks into a test."""
    return make_plugin_manager(distributions=[])


def upper_keys() -> object:
    """A throwaway stage factory."""

    def stage(items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            yield item.replace(key=item.key.upper())

    return stage
