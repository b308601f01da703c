"""The one compiled piece: waiting.py's futex and CPU number (everything else is in pyproject.toml).

Optional: where it cannot be compiled (no C compiler), the install goes on without it and
waiting.py uses ctypes for the same calls.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("reflectmgr._transport._futex", ["reflectmgr/_transport/_futex.c"], optional=True)])
