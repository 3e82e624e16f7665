"""The file names of what a job writes: a checkpoint folder, a job's record and history, a trajectory set's
index and shards. The workflow's rules and the writers and readers below all take them from here."""

WEIGHTS, META = "model.safetensors", "meta.json"  # a checkpoint folder (cmt.formats.checkpoints)
GUIDE = "guide"  # an autoguided teacher's guiding network: a checkpoint folder inside the teacher's (cmt.teachers)
RECORD, HISTORY = "run.json", "metrics.jsonl"  # a job's MLflow record and metric history (cmt.report.tracking)
TRAJ_INDEX = "index.json"  # a trajectory set's index (cmt.sampling.trajectory_sets)


def shard_name(k: int) -> str:
    """The file name of shard ``k`` of a trajectory set."""
    return f"shard-{k:05d}.safetensors"


def shard_names(count: int, shard_size: int) -> list[str]:
    """Every shard of a set of ``count`` trajectories in shards of ``shard_size``."""
    return [shard_name(k) for k in range(-(-count // shard_size))]
