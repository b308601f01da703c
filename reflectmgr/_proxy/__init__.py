"""Layer 4, proxies: the Proxy type generated from the dunder table, the weak cache, releases."""
