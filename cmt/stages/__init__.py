"""Pipeline stages: each takes plain paths and a config subtree, and knows nothing of Snakemake."""
