/*
 * A whole rootless launch from a cold recipe (cold.c): hpccont/runtime/cold.py writes them.
 */
#ifndef HPCCONT_COLD_H
#define HPCCONT_COLD_H

#include "recipe.h"

/* Build the container `r` describes and exec cmd in it.  Returns (nothing changed) when the
 * recipe does not fit this host any more, so that the caller can take the Python path; once
 * the first namespace exists it execs or exits with one line, removing `path` (the recipe). */
void cold_build(const struct recipe *r, char **cmd, const char *path);

/* cold_build's container alone: on return 0 this process is inside it (its root, "/" the
 * working directory, the caller's ids in the nested user namespace), with the image's FUSE
 * server as its child and the page-cache reader (for cmd[0]) done.  -1: nothing has changed.
 * A failure after the first namespace exits with one line (255), removing `path`.  The Slurm
 * step keeper (step.c) is this with no exec after it. */
int cold_setup(const struct recipe *r, char **cmd, const char *path);

#endif
