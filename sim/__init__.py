"""PyBullet tabletop world, Panda robot, cameras, task families and the ``Tabletop-v0`` gymnasium env."""

import os


def _import_pybullet_quietly() -> None:
    """pybullet prints its build time to stderr on import; keep one-line error output clean."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import pybullet  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_pybullet_quietly()

import gymnasium  # noqa: E402

if "Tabletop-v0" not in gymnasium.registry:
    gymnasium.register(id="Tabletop-v0", entry_point="sim.env:TabletopEnv")
