#!/usr/bin/env bash
# The main job from README.md: build a small image and run a program in it — as root, as an
# unprivileged user, and under Slurm when the Slurm pieces are installed.
set -euo pipefail
work=$(mktemp -d /tmp/hpccont-demo.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

echo "== building a busybox image"
cat > "$work/demo.def" <<'DEF'
Bootstrap: busybox

%environment
    export GREETING="hello from the container"

%runscript
    echo "$GREETING: $(id -un) in $(pwd), args: $*"

%labels
    org.opencontainers.image.title demo
DEF
hpccont build --force "$work/demo.sif" "$work/demo.def"
chmod 755 "$work/demo.sif"
hpccont sif list "$work/demo.sif"

echo "== running it as root"
(cd "$work" && hpccont run demo.sif one two)
(cd "$work" && ./demo.sif executable image)

echo "== running it as an unprivileged user (user namespaces + squashfuse)"
id demo-user >/dev/null 2>&1 || useradd --create-home demo-user
chmod 0666 /dev/fuse   # what Debian's udev rule does on a machine with udev
runuser -u demo-user -- sh -c "cd /tmp && hpccont exec $work/demo.sif sh -c 'id; cat /etc/os-release 2>/dev/null | head -1; echo \$GREETING'"

if command -v slurmd >/dev/null && [ -e /usr/include/slurm/spank.h ]; then
    echo "== running it under Slurm (a private one-node cluster on localhost)"
    "$(dirname "$0")/demo_slurm.py" "$work/demo.sif" demo-user
fi
echo "== done"
