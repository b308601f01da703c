"""One module per system under test, each with the same small interface:

setup(quick: bool) -> state
operations(state) -> {name: zero-argument callable}
teardown(state) -> None
"""

ADAPTERS = ["stdlib", "reflectmgr_pipe", "reflectmgr_tcp"]
