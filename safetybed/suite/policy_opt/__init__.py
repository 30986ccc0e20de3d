"""Policy optimisation: on-policy sampling correction, optimistic actor-critics, bilevel alignment (suite I); variance-reduced policy gradients and adversarial environment design (suite II)."""
