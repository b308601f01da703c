"""The shared objects the factories build that the stdlib has no public class for."""

from __future__ import annotations

from typing import Any

from .._owner.inline import add_plain_target


class Namespace:
    """A plain attribute bag; ``repr`` lists public attributes only, like multiprocessing's."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __repr__(self) -> str:
        shown = sorted(f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_"))
        return f"{type(self).__name__}({', '.join(shown)})"


def identity(obj: Any) -> Any:
    """``share`` is ``new(identity, obj)``: the object arrives by value and stays in the manager."""
    return obj


add_plain_target(Namespace)  # the dispatcher may serve its attributes itself (_owner/inline.py)
