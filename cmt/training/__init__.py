"""The one training loop, data parallelism across processes, and clean stops on preemption."""
