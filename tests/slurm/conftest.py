"""Fixtures of the Slurm tests themselves; the cluster, the plugin and ``submit`` are shared
by all suites and live in tests/slurm_fixtures.py (imported by tests/conftest.py)."""
import shutil

import pytest

import helpers

@pytest.fixture(scope="session")
def images(world_tmp, site_root, site_images, test_user):
    """Test images readable by hpcuser: {'sqsh': path, 'dir': its dir, 'name': bare name in the
    site image dir, 'other': a second image whose /etc/hostname says "other"}.  They live
    outside /tmp (site_root), as a site's shared image directory does."""
    d = site_root / "slurm-images"
    d.mkdir(mode=0o755)
    sqsh = helpers.mksquashfs(helpers.make_busybox_rootfs(world_tmp / "slurm-rootfs"), d / "busybox.sqsh")
    other = helpers.mksquashfs(helpers.make_busybox_rootfs(world_tmp / "other-rootfs", hostname="other"), d / "other.sqsh")
    shutil.copy(sqsh, site_images / "tiny.sqsh")
    for p in (sqsh, other, site_images / "tiny.sqsh"):
        p.chmod(0o644)
    return {"sqsh": sqsh, "dir": d, "name": "tiny", "other": other,
            "rootfs": world_tmp / "slurm-rootfs"}
