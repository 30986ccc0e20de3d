"""Generative models and solvers: diffusion guidance, deep BSDE valuation (suite V)."""
