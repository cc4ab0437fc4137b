"""What the host contributes to a container (GPU drivers, MPI libraries).

Adapters return a ``HostAdditions`` (mounts, environment, library paths) that the planner merges
into a launch plan; they never launch anything themselves.
"""
