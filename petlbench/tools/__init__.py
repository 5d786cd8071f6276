"""Tools over finished runs and the engine: eval/predict/export, profile, bench."""
