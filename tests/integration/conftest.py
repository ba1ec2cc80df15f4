"""Session fixtures for integration tests that need a Prefect API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway Prefect API server (SQLite in a temp dir) for the whole session; yields its URL.

    Started once (~10 s) because every start pays Prefect's migrations; PREFECT_HOME points at a temp
    directory so nothing is written to the user's or the project's Prefect home.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        mp.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield PREFECT_API_URL.value()
