"""Fixtures of the pipeline tests. Ray, the moto S3 endpoint and the fake credentials are the session-wide
ones of tests/conftest.py."""

import os

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(scope="session")
def fixtures_dir():
    return FIXTURES
