"""Suite definitions as YAML (vtab1k, fgvc, demo, ...), loaded by petlbench.suite."""
