"""Reinforcement learning of low-level skills with RLlib (new API stack).

``python -m embodied_lm.rl.train_push`` trains the push policy in ``sim.push_env.PushEnv`` with PPO and
exports it as a plain torch MLP to ``skills/checkpoints/push_policy/`` for ``skills.learned.LearnedPush``.
Ray is imported only by the trainer, never by importing this package.
"""
