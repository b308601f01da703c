"""Layer 3, the owner: the object table, the value-or-reference rule, dispatch, the server loop."""
