"""Data: the on-disk layouts, decoding into verified caches, checks, downloads and the demo's synthetic tasks."""
