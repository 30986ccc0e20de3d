"""Data selection and guidance for RL with verifiable rewards: which prompts, how many samples, which hints (suite III)."""
