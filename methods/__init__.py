"""Built-in method plugins, one per file. `petlbench.registry.BUILTIN` lists them by name."""
