"""Layer 6, pools: a concurrent.futures executor whose workers are clients of the manager."""
