"""What effedge keeps on disk to skip work, and tidying it: the cache (:func:`effedge.io.cache_root`) and the
build folders under ``runs/``.

Entries are listed by kind, each with its size and when it was last used (the newest modification inside it;
cache hits touch what they reuse, see :func:`mark_used`). Removal is conservative: only entries of the kinds
effedge makes, only inside the cache root (symlinks are removed, never followed), and each entry disappears
whole: it is first renamed aside (atomic, same folder), then deleted, so a concurrent run finds it or not,
never half of it.
"""
from effedge.cache.entries import (KINDS, MAX_DURATION_S, CleanReport, Entry, Kind, Listing, build_folders,
                                   cache_source, clean, list_cache, mark_used, parse_duration, usage)

__all__ = ["KINDS", "MAX_DURATION_S", "CleanReport", "Entry", "Kind", "Listing", "build_folders", "cache_source",
           "clean", "list_cache", "mark_used", "parse_duration", "usage"]
