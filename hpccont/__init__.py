"""hpccont: HPC containers from single-file images, rootless, inside the scheduler's cgroup.

Package layout follows the flow  request -> plan -> apply:
  image/       what an image is (SIF, squashfs, sandbox, builder, signatures)
  runtime/     how a container is started (request, plan, mounts, kernel, apply)
  host/        what the host contributes (nvidia, mpi)
  schedulers/  one module per batch system, same interface
  modules/     Lmod/Tcl module generation
  cli/         argument parsing front ends (only entry points import it)
"""
__version__ = "0.1.0"
