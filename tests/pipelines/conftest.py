"""Fixtures for the training and forgetting integration tests; their helpers are in
tests/pipelines/helpers.py and tests/helpers.py.

Real Ray where a test asks for the `ray_backend` fixture. Nothing here is autouse:
test_ingest.py shares this folder and must not be affected.
"""

from __future__ import annotations

import pytest


# -- Ray ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_backend():
    """Real embedded Ray for the tests of one module (started lazily by the first shard job),
    shut down when the module is done so no other module inherits it."""
    from sisa.training.scheduler import shutdown_ray

    shutdown_ray()
    yield "ray"
    shutdown_ray()
