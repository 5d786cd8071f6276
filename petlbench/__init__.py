"""petlbench: compare parameter-efficient transfer learning methods for vision models, fairly and fast.

The API mirrors the CLI: `run`, `table`, `plot`, `register_method` (modules are named apart from these
functions, e.g. petlbench.report.tables and petlbench.report.plots, so importing one never shadows them).
"""
__version__ = "0.1.0"


def run(*args, **kwargs):
    """Run methods x tasks x seeds of a suite; see petlbench.sweep.runner.run."""
    from petlbench.sweep.runner import run as _run
    return _run(*args, **kwargs)


def table(results, fmt: str = "md", **kwargs) -> str:
    """Tabulate the records under `results`; see petlbench.report.tables.render."""
    from petlbench.report.tables import render
    return render(results, fmt, **kwargs)


def register_method(cls):
    """Register a Method subclass at run time (notebooks, tests)."""
    from petlbench.registry import register_method as _register
    return _register(cls)


def plot(results, **kwargs) -> list:
    """Accuracy vs trainable parameters as PNG and SVG; see petlbench.report.plots.plot."""
    from petlbench.report.plots import plot as _plot
    return _plot(results, **kwargs)
