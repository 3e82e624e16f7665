"""Drawing from models: the samplers by model kind, and teacher PF-ODE trajectory sets (stored shards or online)."""
