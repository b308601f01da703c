"""Layer 5, the manager: process lifecycle, the client connection pool, the factories."""
