"""--rocm against a synthetic ROCm installation (synthetic_rocm.py).

The first tests call ``hpccont.host.rocm`` exactly as the planner does on an AMD node
(``rocm_additions(request, config, environ, dev_root)``): the same plain functions read a real
ldconfig cache of real ELF files, look the tools up on PATH, and stat the device nodes; only
``dev_root`` points at a directory of mknod'd character devices instead of /dev, because this
machine has no AMD GPU.  The last ones launch the installed hpccont as the unprivileged test
user: the host's HIP runtime is bound and found before the image's own copy."""
import os
import subprocess
from pathlib import Path

import pytest

import helpers
import synthetic_rocm as sr
from hpccont.host import rocm as R
from hpccont.runtime.request import ContainerRequest

pytestmark = pytest.mark.nvidia     # GPU discovery against a synthetic driver tree
PROBE = "/opt/probe/hipprobe"
LIBS = "/.singularity.d/libs"
# generic libraries of rocmliblist.conf a plain Debian host may have
SYSTEM_LIBS = {"libdrm", "libelf", "libnuma", "libpci", "libOpenCL"}


def req(**kw):
    return ContainerRequest(image="x.sif", argv=["true"], rocm=True, **kw)


@pytest.fixture
def dev_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mknod of character devices needs root")
    return sr.fake_dev(tmp_path / "dev")


def environ(rocm):
    return {"PATH": f"{rocm.bin}:/usr/bin:/bin"}


def test_shipped_list_names_the_rocm_stack():
    from hpccont.host.nvidia import parse_liblist
    lst = parse_liblist(sr.SHIPPED.read_text())
    for lib in ("libamdhip64.so", "libhsa-runtime64.so", "libhsakmt.so", "librocm_smi64.so",
                "libdrm_amdgpu.so", "libamd_comgr.so"):
        assert lib in lst.libraries
    assert {"rocminfo", "rocm-smi"} <= set(lst.binaries) and not lst.configs
    packaged = helpers.REPO / "hpccont" / "data" / "rocmliblist.conf"
    assert packaged.read_text() == sr.SHIPPED.read_text()


def test_additions_bind_libraries_tools_and_devices(rocm, rocm_config, dev_root):
    add = R.rocm_additions(req(), rocm_config, environ(rocm), dev_root=str(dev_root))
    assert add.warnings == []
    libs = {m.target: m.source for m in add.mounts if m.why.startswith("rocm: lib")}
    # The cache also holds the system's trusted directories (ldconfig adds them): this host's
    # real libdrm, libelf, libnuma... are bound as on an AMD node; only those are extra.
    system = {t: s for t, s in libs.items() if not s.startswith(str(rocm.root))}
    assert all(os.path.basename(t).split(".so")[0] in SYSTEM_LIBS for t in system), system
    libs = {t: s for t, s in libs.items() if t not in system}
    hip = str(rocm.lib / "libamdhip64.so.6.1.60100")
    assert libs == {
        f"{LIBS}/libamdhip64.so.6": hip, f"{LIBS}/libamdhip64.so": hip,
        f"{LIBS}/libhsa-runtime64.so.1": str(rocm.lib / "libhsa-runtime64.so.1.13.60100"),
        f"{LIBS}/libhsa-runtime64.so": str(rocm.lib / "libhsa-runtime64.so.1.13.60100"),
        f"{LIBS}/libhsakmt.so.1": str(rocm.lib / "libhsakmt.so.1.0.60100"),
        f"{LIBS}/libhsakmt.so": str(rocm.lib / "libhsakmt.so.1.0.60100"),
        f"{LIBS}/librocm_smi64.so.7": str(rocm.lib / "librocm_smi64.so.7.2.60100"),
        f"{LIBS}/librocm_smi64.so": str(rocm.lib / "librocm_smi64.so.7.2.60100"),
        f"{LIBS}/libdrm_amdgpu.so.1": str(rocm.syslib / "libdrm_amdgpu.so.1.0.0"),
        f"{LIBS}/libdrm_amdgpu.so": str(rocm.syslib / "libdrm_amdgpu.so.1.0.0")}
    assert all(m.readonly for m in add.mounts if m.kind == "bind")
    tools = {m.target: m.source for m in add.mounts if m.why == "rocm: binary"}
    assert tools == {"/usr/bin/rocminfo": str(rocm.bin / "rocminfo"),
                     "/usr/bin/rocm-smi": str(rocm.bin / "rocm-smi")}
    devs = {m.target: m.source for m in add.mounts if m.kind == "dev"}
    assert devs == {"/dev/kfd": f"{dev_root}/kfd", "/dev/dri/card0": f"{dev_root}/dri/card0",
                    "/dev/dri/renderD128": f"{dev_root}/dri/renderD128"}
    assert add.ld_library_path == [LIBS] and add.env == {}


def test_report_skips_foreign_architecture_and_names_what_is_missing(rocm, rocm_config, dev_root):
    report = R.discover(rocm_config, environ(rocm), dev_root=str(dev_root))
    skipped = [s for s in report.skipped if "lib32" in s.path]
    assert skipped and all("host is" in s.reason for s in skipped)     # the 32-bit copy
    assert "libMIOpen.so" in report.missing_libraries
    assert report.missing_binaries == ["amd-smi"]
    assert report.missing_devices == []


def test_no_devices_and_no_stack_warn_and_run(rocm, rocm_config, tmp_path):
    empty = tmp_path / "dev"
    empty.mkdir()
    add = R.rocm_additions(req(), rocm_config, environ(rocm), dev_root=str(empty))
    assert add.warnings == [f"rocm: no AMD GPU device ({empty}/kfd, {empty}/dri/card* and "
                            "renderD* missing); running without GPU access"]
    assert any(m.why.startswith("rocm: lib") for m in add.mounts)       # libraries still bound
    # no runtime in the list: nothing bound, not even the generic libraries found
    (tmp_path / "list.conf").write_text("libnothere.so\nlibdrm_amdgpu.so\n")
    rocm_config["rocm"]["liblist"] = str(tmp_path / "list.conf")
    add = R.rocm_additions(req(), rocm_config, environ(rocm), dev_root=str(empty))
    assert len(add.warnings) == 2 and "no ROCm runtime (libamdhip64.so" in add.warnings[0]
    assert add.mounts == [] and add.ld_library_path == []


def test_ldconfig_falls_back_to_the_nvidia_setting(rocm_config):
    rocm_config["rocm"]["ldconfig"] = ""
    rocm_config["nvidia"]["ldconfig"] = "/sbin/ldconfig -C /x"
    assert R.ldconfig_setting(rocm_config) == "/sbin/ldconfig -C /x"


# --------------------------------------------------------------------------- in a container

def _copy_real(src: str, dst: Path):
    import shutil
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), dst)


@pytest.fixture(scope="session")
def hip_image(world_tmp, rocm):
    """busybox + the host's libc + a libamdhip64.so.6-linked probe + the image's own copy."""
    root = helpers.make_busybox_rootfs(world_tmp / "images" / "rocm-rootfs")
    probe = sr.compile_probe(root / "opt/probe/hipprobe", rocm)
    out = subprocess.run(["ldd", str(probe)], capture_output=True, text=True,
                         env={"LD_LIBRARY_PATH": str(rocm.lib)}).stdout
    for line in out.splitlines():
        path = next((p for p in line.split() if p.startswith("/")), None)
        if path and "libamdhip64" not in path:
            _copy_real(path, root / path.lstrip("/"))
            _copy_real(path, root / "lib" / os.path.basename(path))
    sr.shared_lib(root / "usr/lib", "libamdhip64", "6.0.0", "6",
                  sr.LIBHIP_C % {"marker": "image libamdhip64"}, '-DRELEASE="6.0.0"',
                  '-DORIGIN="the image"')
    image = helpers.mksquashfs(root, world_tmp / "images" / "rocm.sqsh")
    image.chmod(0o644)
    return image


@pytest.fixture(scope="session")
def rocm_env(world_tmp, rocm):
    cfg = rocm.config_yaml(world_tmp / "rocm-hpccont.yaml")
    return {"HPCCONT_CONFIG": str(cfg), "PATH": f"{rocm.bin}:/usr/local/bin:/usr/bin:/bin"}


@pytest.mark.rootless
def test_rocm_binds_the_host_hip_runtime(hpccont_user, hip_image, rocm_env, rocm):
    r = hpccont_user("exec", hip_image, PROBE, env=rocm_env)
    assert r.returncode == 0 and "image libamdhip64 6.0.0 from the image" in r.stdout, r.stderr
    r = hpccont_user("exec", "--rocm", hip_image, PROBE, env=rocm_env)
    assert r.returncode == 0, r.stderr
    assert f"synthetic libamdhip64 {rocm.release} from {rocm.lib}" in r.stdout
    assert f"loaded from {LIBS}/libamdhip64.so.6" in r.stdout
    # no AMD GPU on this machine: said in one line, never fatal
    assert r.stderr.count("\n") == 1 and "rocm: no AMD GPU device (/dev/kfd" in r.stderr


@pytest.mark.rootless
def test_rocm_tools_and_library_path_inside(hpccont_user, hip_image, rocm_env, rocm):
    script = f"rocminfo; rocm-smi; echo LD=$LD_LIBRARY_PATH; ls {LIBS}"
    r = hpccont_user("exec", "--rocm", "--contain", hip_image, "sh", "-c", script, env=rocm_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["ROCk module is loaded", f"synthetic rocminfo {rocm.release}",
                         f"synthetic rocm-smi {rocm.release}"]
    assert lines[3].startswith(f"LD={LIBS}")
    bound = {n for n in lines[4:] if n.split(".so")[0] not in SYSTEM_LIBS}
    assert bound == {"libamdhip64.so", "libamdhip64.so.6", "libhsa-runtime64.so",
                              "libhsa-runtime64.so.1", "libhsakmt.so", "libhsakmt.so.1",
                              "librocm_smi64.so", "librocm_smi64.so.7", "libdrm_amdgpu.so",
                              "libdrm_amdgpu.so.1"}
