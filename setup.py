"""The one compiled piece, _transport/_native.c: the shared-memory ring's common case and the
futex (everything else is in pyproject.toml).

Optional: where it cannot be compiled (no C compiler), the install goes on without it, and the
same work is done in Python (shm.py) and through ctypes (waiting.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("reflectmgr._transport._native", ["reflectmgr/_transport/_native.c"], optional=True)])
