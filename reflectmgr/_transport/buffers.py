"""Destinations for large incoming buffers, filled in one copy.

A large ``bytes`` value is rebuilt without the second copy ``bytes(bytearray)`` would make: CPython
hands out a bytes object whose contents are not yet initialized (``PyBytes_FromStringAndSize``
with NULL, the C API's way to build bytes in place), which the transport fills before anyone else
can see it. A ``bytearray`` is made the same way (``PyByteArray_FromStringAndSize``), so its pages
are not zeroed first: memory is used as the bytes arrive, not when the size is announced.
Elsewhere (no ctypes) it falls back to a zeroed bytearray, and one more copy for ``bytes``.
"""

from __future__ import annotations

from typing import Any

_new_bytes: Any
_new_bytearray: Any
try:
    import ctypes

    _new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new_bytes.restype = ctypes.py_object
    _new_bytes.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
    _bytes_data = ctypes.pythonapi.PyBytes_AsString
    _bytes_data.restype = ctypes.c_void_p
    _bytes_data.argtypes = (ctypes.py_object,)
    _new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
    _new_bytearray.restype = ctypes.py_object
    _new_bytearray.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
except (ImportError, AttributeError):  # no ctypes, or not CPython
    _new_bytes = _new_bytearray = None


def fresh_buffer(size: int, readonly: bool) -> tuple[Any, memoryview]:
    """``(obj, view)``: a new ``bytes`` (``readonly``) or ``bytearray`` of ``size`` bytes and a
    writable byte view of its memory, for the caller to fill completely before using ``obj``."""
    if _new_bytes is None:
        obj = bytearray(size)
        return obj, memoryview(obj)
    if not readonly:
        obj = _new_bytearray(None, size)
        return obj, memoryview(obj)
    obj = _new_bytes(None, size)
    memory = (ctypes.c_char * size).from_address(_bytes_data(obj))
    return obj, memoryview(memory).cast("B")
