"""Environment-module (Lmod / Tcl) generation that hides a container behind plain commands."""
