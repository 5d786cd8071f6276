"""Sweeps: many runs, anywhere (protocols as phases of jobs, executors local and Slurm, status)."""
