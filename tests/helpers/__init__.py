"""Code the tests share: the smoke project, stand-ins for foreign files, small models, a local SLURM cluster."""
