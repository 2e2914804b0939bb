"""The RL stage: rollouts, rewards-to-advantages, policy updates and weight sync of the page policy."""
