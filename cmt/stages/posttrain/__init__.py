"""Post-training objectives (ECT; ECD and MeanFlow follow), each initialised from random, diffusion or CMT weights."""
