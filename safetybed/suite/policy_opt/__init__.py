"""Policy optimisation: on-policy sampling correction, optimistic actor-critics, bilevel alignment (suite I)."""
