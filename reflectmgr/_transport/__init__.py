"""Layer 2, transports: duplex frame channels with one interface, and the authkey handshake."""
