# One place for the commands README.md gives users and .ci/run calls.
PREFIX ?= /opt/hpccont
VENV := $(PREFIX)/venv
PY := $(VENV)/bin/python

DEBIAN_PACKAGES := python3 python3-venv python3-dev gcc make libc6-dev binutils procps \
	squashfs-tools squashfuse fuse3 libfuse3-dev libdeflate0 fuse-overlayfs busybox-static \
	util-linux uidmap \
	debootstrap ca-certificates \
	slurmctld slurmd slurm-client libslurm-dev munge libpmix-dev lua-posix \
	openmpi-bin libopenmpi-dev mpich libmpich-dev \
	lmod gnupg charliecloud-runtime bubblewrap hyperfine \
	docker-registry skopeo apache2-utils umoci zstd openssl \
	python3-fusepy python3-matplotlib e2fsprogs fuse2fs strace libcap2-bin tcl lua5.3
PIP_PACKAGES := pyyaml psutil pytest hypothesis pytest-mpi pytest-timeout nvidia-ml-py mpi4py cryptography

.PHONY: setup install test demo bench

# Debian packages, a virtual environment from the system Python (a second user must be able
# to run it), hpccont installed into it, and /usr/local/bin links to the entry points.
setup:
	apt-get update -q
	apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES)
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_PACKAGES)
	$(MAKE) install

install:
	$(PY) -m pip install -q --no-deps --force-reinstall .
	cd / && $(PY) -m hpccont.cli.launchers $(VENV)/bin >/dev/null
	chmod -R a+rX $(PREFIX)
	for f in hpccont container-exec run-singularity; do ln -sf $(VENV)/bin/$$f /usr/local/bin/$$f; done
	# The exec fast path (launcher/): in front of hpccont and run-singularity when it builds;
	# without a C compiler the links stay on the Python entry points.
	if $(MAKE) -s -C launcher O=$(VENV)/bin PY_BINDIR=$(VENV)/bin; then \
		for f in hpccont run-singularity; do ln -sf $(VENV)/bin/hpccont-fast /usr/local/bin/$$f; done; \
	fi
	# The image server's caching adapter, beside the entry point (needs libfuse3's headers).
	$(MAKE) -s -C launcher cache O=$(VENV)/bin || echo "no hpccont-fusecache.so: install libfuse3-dev"

# The main job: build a small image and run a program in it, as root, as an unprivileged user,
# and under Slurm.
demo:
	bash docs/demo.sh

test:
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 tests

bench:
	$(PY) bench/startup
