"""Choosing in-context examples by policy gradient (suite IV)."""
