"""The silent-cut TCP proxy, now in the bench (``scripts/chaos --cluster`` cuts with it too)."""

from pubtasks.bench.proxy import Proxy

__all__ = ["Proxy"]
