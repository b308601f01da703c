"""Layer 1, the wire: opcodes, frame format, and the pickle codec. Imports nothing above it."""
