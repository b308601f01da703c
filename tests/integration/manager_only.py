"""A module only the manager imports (tests/integration/test_values.py): a proxy of its class has
no local class in the test process. Nothing in the test process may import it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Unseen:
    x: int = 0
