"""PyBullet tabletop world, Panda robot, cameras, task families and the ``Tabletop-v0`` gymnasium env."""

import gymnasium

if "Tabletop-v0" not in gymnasium.registry:
    gymnasium.register(id="Tabletop-v0", entry_point="sim.env:TabletopEnv")
