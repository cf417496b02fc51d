"""RAO's learning signal: per-node rewards, shared-root advantages (more to come: losses, learner)."""
