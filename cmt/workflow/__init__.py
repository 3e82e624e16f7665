"""Workflow glue (no Snakemake imports): job paths and axes, how a job is launched, SLURM requests."""
