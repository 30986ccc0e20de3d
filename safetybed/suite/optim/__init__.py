"""Optimisation and learning systems: NAS sampling, online learning, gossip averaging, federated curricula, bilevel optimisation (suite V)."""
