"""Training rounds (reward model, PPO, DPO, SFT) arrive here with the training issue."""
