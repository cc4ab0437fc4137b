#!/bin/sh
# @@GENERATED@@
# The image of the loaded module (a user's copy after image-update), else the one generated for.
image=@@IMAGE@@
if [ "${HPCCONT_MODULE-}" = @@MODULE@@ ] && [ -n "${HPCCONT_IMAGE-}" ]; then image=$HPCCONT_IMAGE; fi
