"""Numerical building blocks: EDM preconditioning and the EDM <-> flow-matching bridge, sigma grids and PF-ODE
solvers, the closed-form Gaussian oracle."""
