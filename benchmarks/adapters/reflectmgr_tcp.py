"""reflectmgr over the "tcp" transport."""

from __future__ import annotations

from typing import Any

from adapters import _reflectmgr_common as common

NAME = "reflectmgr tcp"


def setup(quick: bool) -> Any:
    return common.setup("tcp")


operations = common.operations
teardown = common.teardown
server_pid = common.server_pid
client_info = common.client_info
client = common.client
