from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import NodeProcess, wait_gone


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def solo_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One real node serving the bundled SmolLM2-135M, shared by a module's tests."""
    node = NodeProcess(["--model", "SmolLM2-135M"], tmp_path_factory.mktemp("solo")).start()
    try:
        node.wait_serving()
        yield node
    finally:
        pids = [c.pid for c in node.children()]
        node.stop()
        assert wait_gone(pids) == [], "model server outlived its node"
