"""One module per system under test, each with the same small interface:

setup(quick: bool) -> state
operations(state) -> {name: zero-argument callable}
teardown(state) -> None
"""

ADAPTERS = [
    "stdlib",
    "multiprocess_mgr",
    "rpyc_classic",
    "pyro5_daemon",
    "reflectmgr_shm",
    "reflectmgr_pipe",
    "reflectmgr_tcp",
    "reflectmgr_tls",
]
