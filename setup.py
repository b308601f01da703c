"""The compiled pieces (everything else is in pyproject.toml):

- _transport/_native.c: the shared-memory ring's common case and the futex;
- _wire/_plain.c: the common message's pickle, written and read without a Pickler.

Both optional: where they cannot be compiled (no C compiler), the install goes on without them,
and the same work is done in Python (shm.py), through ctypes (waiting.py) and by pickle (codec.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("reflectmgr._transport._native", ["reflectmgr/_transport/_native.c"], optional=True),
        Extension("reflectmgr._wire._plain", ["reflectmgr/_wire/_plain.c"], optional=True),
    ]
)
