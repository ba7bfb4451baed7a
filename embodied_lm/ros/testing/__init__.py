"""Test and demo tools for the ROS bridge: a minimal rosbridge v2 server (``server``) and a sim-backed
robot behind it (``sim_endpoint``: ``python -m embodied_lm.ros.testing.sim_endpoint --port 9090``).

Only this package imports the simulator; the bridge modules (``embodied_lm.ros``) never do.
"""
