"""Fixtures of the deployment tests."""

import os

import pytest


@pytest.fixture
def open_umask():
    """Umask 000 for the test: the modes the code sets must not depend on the umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)
