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

#endif
