"""Published certificate values a certificate is shown against (data the certificate needs, kept with certify)."""

from __future__ import annotations

import math
from typing import Any

#: Certified expected return of the CartPole-v0 5-frame-stack agents re-run by ReCePS (policy-smoothing
#: scripts, n = 10,000 clean episodes, integer Clopper-Pearson estimator at alpha = 0.05), recomputed from the
#: P[R > i] arrays printed in ``mrh996/ReCePS/test_plot.ipynb``: ``shared/research/policy_smoothing.md`` §1(d),
#: table 1. Not the paper's own checkpoints (its figure values could not be retrieved).
PUBLISHED_CARTPOLE = {
    0.2: {"clean": 197.9, "budgets": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0],
          "certified": [197.4, 193.4, 185.3, 171.1, 149.3, 119.9, 86.0, 28.1, 4.4]},
    0.4: {"clean": 145.8, "budgets": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0],
          "certified": [143.5, 131.6, 119.2, 106.7, 94.5, 82.7, 71.4, 50.9, 33.6]},
}
PUBLISHED_SOURCE = ("published re-run: policy-smoothing CartPole-v0 agent, 5-frame stack, SB3 DQN, re-run by ReCePS "
                    "(mrh996/ReCePS test_plot.ipynb), integer Clopper-Pearson estimator, n = 10,000, alpha = 0.05; "
                    "research/policy_smoothing.md section 1(d)")


def published_reference(simulator: str, task: str, sigma: float, quantity: str, episode_steps: int
                        ) -> dict[str, Any] | None:
    """The published re-run curve for the same setting (CartPole-200, expected return, same sigma), else ``None``."""
    if simulator != "classic" or task != "cartpole" or quantity != "expected_return" or episode_steps != 200:
        return None
    for published_sigma, curve in PUBLISHED_CARTPOLE.items():
        if math.isclose(sigma, published_sigma):
            return {"sigma": published_sigma, **curve, "source": PUBLISHED_SOURCE}
    return None
