"""Differentially private training: DP-SGD controllers and a privacy accountant (suite IV)."""
