"""``hpccont doctor`` checks, each against a healthy copy of what it reads and then with one
fault made on purpose.  The healthy tree passes every check first, so each fault test shows
that exactly that fault turns the check to WARN/FAIL.

The Slurm side is a real directory tree: slurm.conf, plugstack.conf, cli_filter.lua, a
launcher script, and shared objects compiled here with gcc that export what Slurm's plugins
export (plugin_name, plugin_type, plugin_version) or need (liblua, the PMIx directory).
"""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from hpccont import doctor
from hpccont.doctor import FAIL, OK, SKIP, WARN, Context

CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="needs a C compiler")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="root-owned files and mknod need root")
RUNNING = "22.05.8"     # the Slurm version the healthy tree claims to run (ctx.slurm_version)


def cc_shared(out: Path, source: str, *flags: str) -> Path:
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(out), str(src), *flags], check=True,
                   capture_output=True)
    return out


def fake_plugin(out: Path, version: int, name: str = "hpccont", ptype: str = "spank") -> Path:
    """A shared object with the symbols SPANK_PLUGIN() defines."""
    return cc_shared(out, f"""
const char plugin_name[] = "{name}";
const char plugin_type[] = "{ptype}";
const unsigned int plugin_version = {version:#x};
const unsigned int spank_plugin_version = 1;
""")


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


class Tree:
    """A healthy node: every path a Context reads, under one directory."""

    def __init__(self, root: Path):
        self.root = root
        root.chmod(0o755)
        self.conf_dir = root / "etc-slurm"
        self.conf = self.conf_dir / "slurm.conf"
        self.plugstack = self.conf_dir / "plugstack.conf"
        self.plugin_dir = root / "slurm-plugins"
        self.spool = root / "spool"
        self.tmpfs = root / "tmpfs"
        self.bin = root / "bin"
        self.launcher = self.bin / "hpccont"
        self.so = root / "lib" / "hpccont_spank.so"
        self.proc_sys = root / "proc-sys"
        self.proc = root / "proc"
        self.lua = root / "lua" / "{lua}"
        self.mountinfo = root / "mountinfo"
        self.pmix_lib = root / "pmix2" / "lib"
        self.settings = {
            "PlugStackConfig": str(self.plugstack),
            "PluginDir": str(self.plugin_dir),
            "CliFilterPlugins": "cli_filter/lua",
            "LaunchParameters": "use_interactive_step",
            "SlurmdSpoolDir": str(self.spool),
            "TmpFS": str(self.tmpfs),
            "MpiDefault": "none",
        }
        for d in (self.spool, self.tmpfs, self.bin, self.so.parent, self.plugin_dir, self.proc,
                  self.pmix_lib, self.root / "lua" / "5.1"):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        write(self.launcher, "#!/bin/sh\nexec true\n", 0o755)
        fake_plugin(self.so, 0x160508)
        self.write_slurm_conf()
        self.write_plugstack(f"required {self.so} hpccont={self.launcher}\n")
        shutil.copy(helpers.REPO / "spank_plugin" / "cli_filter.lua", self.conf_dir / "cli_filter.lua")
        # Slurm's Lua plugin, linked with liblua5.1 like Debian's; lua-posix for Lua 5.1.
        libdir = root / "fake-liblua"
        libdir.mkdir()
        cc_shared(libdir / "liblua5.1.so", "int lua_dummy(void) { return 0; }\n",
                  "-Wl,-soname,liblua5.1.so.0")
        cc_shared(self.plugin_dir / "cli_filter_lua.so", "int cli_filter_p_dummy(void) { return 0; }\n",
                  f"-L{libdir}", "-Wl,--no-as-needed", "-llua5.1")
        write(self.root / "lua" / "5.1" / "posix.so", "")
        # Slurm's PMIx plugin names the directory it dlopen()s libpmix.so from.
        cc_shared(self.plugin_dir / "mpi_pmix_v4.so",
                  f'const char *pmix_dir = "{self.pmix_lib}";\n'
                  'const char *pmix_lib = "libpmix.so";\n')
        write(self.pmix_lib / "libpmix.so", "")
        write(self.proc_sys / "user" / "max_user_namespaces", "15000\n")
        write(self.mountinfo, f"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")

    def write_slurm_conf(self, drop=(), **extra) -> None:
        settings = {k: v for k, v in {**self.settings, **extra}.items() if k not in drop}
        text = "ClusterName=test\n" + "".join(f"{k}={v}\n" for k, v in settings.items())
        text += "NodeName=node1 CPUs=2 State=UNKNOWN\nPartitionName=debug Nodes=ALL Default=YES\n"
        write(self.conf, text)

    def write_plugstack(self, text: str) -> None:
        write(self.plugstack, text)

    def context(self, **fields) -> Context:
        values = dict(
            proc_sys=str(self.proc_sys), proc=str(self.proc), mountinfo=str(self.mountinfo),
            slurm_version=RUNNING, slurm_include=str(self.root / "no-include"),
            lua_dirs=(str(self.lua),), lib_dirs=(str(self.root / "no-lib"),),
            shipped_cli_filter=str(helpers.REPO / "spank_plugin" / "cli_filter.lua"),
            probe_userns=False, node="node1")
        values.update(fields)
        env = {k: v for k, v in os.environ.items() if k != "HPCCONT_CONFIG"}
        return Context(slurm_conf=str(self.conf), environ=env, **values)


@pytest.fixture
def tree(tmp_path):
    if CC is None:
        pytest.skip("needs a C compiler")
    if os.geteuid() != 0:
        pytest.skip("the launcher must be root-owned: run as root")
    return Tree(tmp_path)


def run(ctx: Context, name: str) -> doctor.Result:
    result = doctor.CHECKS[name](ctx)
    assert result.name == name
    assert result.status in (OK, WARN, FAIL, SKIP)
    if result.status in (WARN, FAIL):
        assert result.fix, f"{name} {result.status} without advice: {result.found}"
    return result


SLURM_CHECKS = ("plugstack", "spank-plugin", "cli-filter", "spool-tmpfs", "pmix")


def test_healthy_tree_passes_every_slurm_check(tree):
    ctx = tree.context()
    for name in ("slurm-conf",) + SLURM_CHECKS:
        r = run(ctx, name)
        assert r.status == OK, r.line()


# -- user namespaces ------------------------------------------------------------------------

def test_userns_disabled_by_max_user_namespaces(tree):
    write(tree.proc_sys / "user" / "max_user_namespaces", "0\n")
    r = run(tree.context(), "userns")
    assert r.status == FAIL and "max_user_namespaces is 0" in r.found
    assert "sysctl" in r.fix


def test_userns_disabled_by_unprivileged_userns_clone(tree):
    assert run(tree.context(), "userns").status == OK
    write(tree.proc_sys / "kernel" / "unprivileged_userns_clone", "0\n")
    r = run(tree.context(), "userns")
    assert r.status == FAIL and "unprivileged_userns_clone is 0" in r.found
    write(tree.proc_sys / "kernel" / "unprivileged_userns_clone", "1\n")
    assert run(tree.context(), "userns").status == OK


def test_userns_restricted_by_apparmor(tree):
    write(tree.proc_sys / "kernel" / "apparmor_restrict_unprivileged_userns", "1\n")
    r = run(tree.context(), "userns")
    assert r.status == FAIL and "apparmor" in r.found


def test_userns_real_probe():
    """The probe really creates a namespace here (this machine allows them: see
    platform-notes), as nobody when run by root."""
    r = run(Context(), "userns")
    assert r.status == OK, r.line()
    assert "probe as" in r.found


# -- /dev/fuse ------------------------------------------------------------------------------

@needs_root
def test_fuse_device_mode(tmp_path):
    dev = tmp_path / "fuse"
    os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(10, 229))
    os.chmod(dev, 0o600)
    r = run(Context(dev_fuse=str(dev)), "fuse-device")
    assert r.status == FAIL and "mode 0600" in r.found
    assert "chmod 0666" in r.fix
    os.chmod(dev, 0o666)
    r = run(Context(dev_fuse=str(dev)), "fuse-device")
    assert r.status == OK and "10,229" in r.found


def test_fuse_device_missing_or_not_a_device(tmp_path):
    r = run(Context(dev_fuse=str(tmp_path / "nothing")), "fuse-device")
    assert r.status == FAIL
    write(tmp_path / "plain", "", 0o666)
    r = run(Context(dev_fuse=str(tmp_path / "plain")), "fuse-device")
    assert r.status == FAIL and "not a character device" in r.found


# -- FUSE servers ---------------------------------------------------------------------------

def test_default_dirs_are_the_runtimes():
    from hpccont.runtime.apply import SYSTEM_BIN
    assert doctor.SYSTEM_BIN == SYSTEM_BIN


def fake_program(d: Path, name: str, version_line: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return write(d / name, f"#!/bin/sh\necho '{version_line}'\n", 0o755)


def test_squashfuse_found_with_version(tmp_path):
    fake_program(tmp_path, "squashfuse_ll", "squashfuse 0.5.2 (c) 2012 Dave Vasilevsky")
    r = run(Context(bin_dirs=(str(tmp_path),)), "squashfuse")
    assert r.status == OK
    assert f"{tmp_path}/squashfuse_ll 0.5.2" in r.found


def test_squashfuse_missing(tmp_path):
    fake_program(tmp_path, "squashfuse", "squashfuse 0.1.104")   # not the configured one
    r = run(Context(bin_dirs=(str(tmp_path),)), "squashfuse")
    assert r.status == FAIL and "squashfuse_ll (runtime.squashfuse) not found" in r.found


def test_fuse_overlayfs_version_is_its_own(tmp_path):
    fake_program(tmp_path, "fuse-overlayfs",
                 "fusermount3 version: 3.14.0' ; echo 'fuse-overlayfs: version 1.10")
    r = run(Context(bin_dirs=(str(tmp_path),)), "fuse-overlayfs")
    assert r.status == OK and r.found.endswith("fuse-overlayfs 1.10")


def test_fuse_overlayfs_missing(tmp_path):
    r = run(Context(bin_dirs=(str(tmp_path),), kernel_release="6.1.0"), "fuse-overlayfs")
    assert r.status == OK and "not needed" in r.found
    r = run(Context(bin_dirs=(str(tmp_path),), kernel_release="5.4.0-150-generic"), "fuse-overlayfs")
    assert r.status == WARN and "5.11" in r.found
    cfg = write(tmp_path / "hpccont.yaml", "runtime:\n  overlay: fuse-overlayfs\n")
    ctx = Context(bin_dirs=(str(tmp_path),), environ={"HPCCONT_CONFIG": str(cfg)})
    if os.geteuid() == 0:   # HPCCONT_CONFIG counts for root
        assert run(ctx, "fuse-overlayfs").status == FAIL


# -- site config ----------------------------------------------------------------------------

@needs_root
def test_site_config(tmp_path):
    good = write(tmp_path / "good.yaml", "runtime:\n  tmp_size: 128m\n")
    r = run(Context(environ={"HPCCONT_CONFIG": str(good)}), "site-config")
    assert r.status == OK and "valid" in r.found
    bad = write(tmp_path / "bad.yaml", "runtime:\n  rootles: always\n")
    r = run(Context(environ={"HPCCONT_CONFIG": str(bad)}), "site-config")
    assert r.status == FAIL and "runtime.rootles" in r.found
    strict = write(tmp_path / "strict.yaml", "signatures:\n  require: true\n")
    r = run(Context(environ={"HPCCONT_CONFIG": str(strict)}), "site-config")
    assert r.status == WARN and "keyring is empty" in r.found


# -- slurm.conf, plugstack ------------------------------------------------------------------

def test_no_slurm_conf(tree):
    ctx = tree.context()
    ctx.slurm_conf = str(tree.root / "absent.conf")
    r = run(ctx, "slurm-conf")
    assert r.status in (FAIL, SKIP) and "absent.conf" in r.found
    for name in SLURM_CHECKS:
        assert run(ctx, name).status == SKIP


def test_plugstack_without_hpccont_line(tree):
    tree.write_plugstack("required /usr/lib/other/spank_other.so\n")
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and "no hpccont_spank.so line" in r.found
    assert run(tree.context(), "spank-plugin").status == FAIL


def test_plugstack_dropin_not_included(tree):
    """install-plugin writes plugstack.conf.d/hpccont.conf: useless without the include line."""
    write(tree.conf_dir / "plugstack.conf.d" / "hpccont.conf",
          f"required {tree.so} hpccont={tree.launcher}\n")
    tree.write_plugstack("# nothing here\n")
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and "include" in r.fix and "plugstack.conf.d" in r.fix
    tree.write_plugstack(f"include {tree.conf_dir}/plugstack.conf.d/*.conf\n")
    r = run(tree.context(), "plugstack")
    assert r.status == OK and "plugstack.conf.d/hpccont.conf:1" in r.found


def test_plugstack_default_location(tree):
    """Without PlugStackConfig, plugstack.conf next to slurm.conf."""
    tree.write_slurm_conf(drop=("PlugStackConfig",))
    assert run(tree.context(), "plugstack").status == OK
    tree.plugstack.rename(tree.conf_dir / "elsewhere.conf")
    assert run(tree.context(), "plugstack").status == FAIL


def test_plugstack_launcher_group_writable(tree):
    tree.launcher.chmod(0o775)
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and "0775" in r.found and "group/other-writable" in r.found


def test_plugstack_launcher_directory_writable(tree):
    tree.bin.chmod(0o777)
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and f"directory {tree.bin}" in r.found


def test_plugstack_launcher_not_root_owned(tree):
    os.chown(tree.launcher, 1, 1)
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and "not root" in r.found


def test_plugstack_launcher_interpreter_unsafe(tree):
    interp = write(tree.root / "py" / "python", "#!/bin/sh\n", 0o755)
    interp.parent.chmod(0o755)
    write(tree.launcher, f"#!{interp} -IS\n", 0o755)
    assert run(tree.context(), "plugstack").status == OK
    interp.chmod(0o757)
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and str(interp) in r.found


def python_launcher(tree, flags: str, libdir: Path) -> None:
    """A launcher as hpccont.cli.launchers writes it (or pip, without flags)."""
    interp = write(tree.root / "py" / "python3", "#!/bin/sh\n", 0o755)
    interp.parent.chmod(0o755)
    write(tree.launcher, f"#!{interp} {flags}\nimport sys\nsys.path[0:0] = {[str(libdir)]!r}\n"
          "from hpccont.cli.main import main\nsys.exit(main())\n", 0o755)


def test_plugstack_launcher_python_not_isolated(tree):
    """pip's console script (#!python, no -I) honours PYTHONPATH: not for root."""
    lib = tree.root / "pkg"
    lib.mkdir(mode=0o755)
    python_launcher(tree, "-IS", lib)
    assert run(tree.context(), "plugstack").status == OK
    python_launcher(tree, "", lib)
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and "honours PYTHONPATH" in r.found
    write(tree.launcher, "#!/usr/bin/env python3\n", 0o755)
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and "through PATH" in r.found


def test_plugstack_launcher_package_dir_writable(tree):
    lib = tree.root / "pkg"
    lib.mkdir(mode=0o755)
    python_launcher(tree, "-IS", lib)
    lib.chmod(0o775)
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and f"sys.path entry {lib} is mode 0775" in r.found


def test_plugstack_launcher_relative_or_missing(tree):
    tree.write_plugstack(f"required {tree.so} hpccont=bin/hpccont\n")
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and "not an absolute path" in r.found
    tree.write_plugstack(f"required {tree.so} hpccont={tree.root}/nope\n")
    assert run(tree.context(), "plugstack").status == FAIL


def test_plugstack_launcher_default_is_usr_bin(tree):
    """No hpccont= argument: the plugin's default /usr/bin/hpccont is what gets checked."""
    tree.write_plugstack(f"required {tree.so}\n")
    r = run(tree.context(), "plugstack")
    assert "hpccont=/usr/bin/hpccont" in r.found


def test_plugstack_bad_argument_and_optional(tree):
    tree.write_plugstack(f"required {tree.so} hpccont={tree.launcher} wrap_bach=yes\n")
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and "wrap_bach" in r.found
    tree.write_plugstack(f"optional {tree.so} hpccont={tree.launcher}\n")
    r = run(tree.context(), "plugstack")
    assert r.status == WARN and "optional" in r.found


def test_plugstack_twice(tree):
    line = f"required {tree.so} hpccont={tree.launcher}\n"
    tree.write_plugstack(line + line)
    r = run(tree.context(), "plugstack")
    assert r.status == FAIL and "2 times" in r.found


# -- the plugin's Slurm version -------------------------------------------------------------

def test_plugin_version_read_from_the_elf_file(tree):
    info = doctor.spank_plugin_info(str(tree.so))
    assert info == {"name": "hpccont", "type": "spank", "version": 0x160508}
    fake_plugin(tree.so, 0x170b02, name="other", ptype="spank")
    assert doctor.spank_plugin_info(str(tree.so)) == {"name": "other", "type": "spank",
                                                      "version": 0x170b02}
    assert doctor.version_text(0x170b02) == "23.11.2"


def test_plugin_built_for_another_slurm(tree):
    fake_plugin(tree.so, 0x170b02)
    r = run(tree.context(), "spank-plugin")
    assert r.status == FAIL
    assert "built for Slurm 23.11.2" in r.found and "Slurm here is 22.05.8" in r.found
    assert "install-plugin" in r.fix


def test_plugin_other_micro_release_is_accepted(tree):
    """Slurm compares only major.minor of SPANK plugins."""
    fake_plugin(tree.so, 0x160502)
    r = run(tree.context(), "spank-plugin")
    assert r.status == OK and "micro release differs" in r.found


def test_plugin_headers_of_another_slurm(tree):
    inc = tree.root / "include" / "slurm"
    write(inc / "slurm_version.h", "#define SLURM_VERSION_NUMBER 0x170b02\n")
    r = run(tree.context(slurm_include=str(tree.root / "include")), "spank-plugin")
    assert r.status == WARN and "23.11.2" in r.found
    fake_plugin(tree.so, 0x170b02)
    r = run(tree.context(slurm_include=str(tree.root / "include")), "spank-plugin")
    assert r.status == FAIL and "slurm_version.h is 23.11.2 too" in r.fix


def test_plugin_not_a_plugin(tree):
    write(tree.so, "not elf")
    assert run(tree.context(), "spank-plugin").status == FAIL
    cc_shared(tree.so, "int x(void) { return 0; }\n")
    r = run(tree.context(), "spank-plugin")
    assert r.status == FAIL and "not a SPANK plugin" in r.found
    fake_plugin(tree.so, 0x160508, name="pyxis")
    r = run(tree.context(), "spank-plugin")
    assert r.status == FAIL and "not the hpccont plugin" in r.found
    tree.so.unlink()
    assert run(tree.context(), "spank-plugin").status == FAIL


def test_plugin_relative_path_in_plugin_dir(tree):
    shutil.copy(tree.so, tree.plugin_dir / "hpccont_spank.so")
    tree.write_plugstack(f"required hpccont_spank.so hpccont={tree.launcher}\n")
    r = run(tree.context(), "spank-plugin")
    assert r.status == OK and str(tree.plugin_dir / "hpccont_spank.so") in r.found


SPANK_H = Path("/usr/include/slurm/spank.h")


@pytest.mark.skipif(not SPANK_H.exists() or shutil.which("slurmd") is None,
                    reason="needs libslurm-dev and slurmd")
def test_plugin_built_with_the_real_header_matches_slurmd(tree):
    """The SPANK_PLUGIN() macro of the installed spank.h, against the installed slurmd -V."""
    cc_shared(tree.so, "#include <slurm/spank.h>\nSPANK_PLUGIN(hpccont, 1);\n")
    r = run(tree.context(slurm_version=None, slurm_include="/usr/include"), "spank-plugin")
    out = subprocess.run(["slurmd", "-V"], capture_output=True, text=True).stdout
    assert r.status == OK, r.line()
    assert f"Slurm {out.split()[-1]}" in r.found and "slurmd -V" in r.found


# -- cli_filter -----------------------------------------------------------------------------

def test_cli_filter_not_configured(tree):
    tree.write_slurm_conf(drop=("CliFilterPlugins",))
    r = run(tree.context(), "cli-filter")
    assert r.status == FAIL and "CliFilterPlugins=(unset)" in r.found
    assert "CliFilterPlugins=cli_filter/lua" in r.fix
    tree.write_slurm_conf(CliFilterPlugins="cli_filter/syslog")
    assert run(tree.context(), "cli-filter").status == FAIL
    tree.write_slurm_conf(CliFilterPlugins="cli_filter/syslog,cli_filter/lua")
    assert run(tree.context(), "cli-filter").status == OK


def test_cli_filter_script_missing_or_foreign(tree):
    script = tree.conf_dir / "cli_filter.lua"
    script.write_text("function slurm_cli_pre_submit(options, offset) return 0 end\n")
    r = run(tree.context(), "cli-filter")
    assert r.status == WARN and "not hpccont's filter" in r.found
    script.write_text((helpers.REPO / "spank_plugin" / "cli_filter.lua").read_text() + "-- old\n")
    r = run(tree.context(), "cli-filter")
    assert r.status == WARN and "differs from" in r.found
    script.unlink()
    r = run(tree.context(), "cli-filter")
    assert r.status == FAIL and "every srun/sbatch/salloc fails" in r.found


def test_cli_filter_without_lua_posix(tree):
    (tree.root / "lua" / "5.1" / "posix.so").unlink()
    r = run(tree.context(), "cli-filter")
    assert r.status == FAIL and "no lua-posix for Lua 5.1" in r.found
    write(tree.root / "lua" / "5.1" / "posix" / "init.lua", "")
    assert run(tree.context(), "cli-filter").status == OK


def test_cli_filter_without_slurms_lua_plugin(tree):
    (tree.plugin_dir / "cli_filter_lua.so").unlink()
    r = run(tree.context(), "cli-filter")
    assert r.status == FAIL and "cli_filter_lua.so not in" in r.found


def test_cli_filter_without_interactive_step(tree):
    tree.write_slurm_conf(drop=("LaunchParameters",))
    r = run(tree.context(), "cli-filter")
    assert r.status == WARN and "use_interactive_step" in r.fix


# -- spool and TmpFS ------------------------------------------------------------------------

def test_spool_missing(tree):
    tree.spool.rmdir()
    r = run(tree.context(), "spool-tmpfs")
    assert r.status == WARN and f"SlurmdSpoolDir {tree.spool} does not exist" in r.found


def test_tmpfs_missing_and_percent_n(tree):
    tree.write_slurm_conf(TmpFS=f"{tree.root}/tmp-%n")
    r = run(tree.context(), "spool-tmpfs")
    assert r.status == WARN and f"TmpFS {tree.root}/tmp-node1 does not exist" in r.found
    (tree.root / "tmp-node1").mkdir()
    assert run(tree.context(), "spool-tmpfs").status == OK


def test_tmpfs_on_a_network_filesystem(tree):
    with open(tree.mountinfo, "a") as f:
        f.write(f"40 22 0:50 / {tree.tmpfs} rw,relatime - nfs4 server:/scratch rw\n")
    r = run(tree.context(), "spool-tmpfs")
    assert r.status == WARN and "is on nfs4, shared between nodes" in r.found


def test_tmpfs_shared_by_several_slurmd_here(tree):
    for pid in ("101", "102"):
        write(tree.proc / pid / "cmdline", f"slurmd\0-f\0{tree.conf}\0-N\0node{pid}\0")
    write(tree.proc / "103" / "cmdline", "slurmd\0-f\0/other/slurm.conf\0")
    r = run(tree.context(), "spool-tmpfs")
    assert r.status == WARN and "2 slurmd on this machine share TmpFS" in r.found
    assert "%n" in r.fix
    tree.write_slurm_conf(TmpFS=f"{tree.root}/tmp-%n", SlurmdSpoolDir=f"{tree.root}/spool-%n")
    for n in ("node1",):
        (tree.root / f"tmp-{n}").mkdir()
        (tree.root / f"spool-{n}").mkdir()
    assert run(tree.context(), "spool-tmpfs").status == OK


# -- PMIx -----------------------------------------------------------------------------------

def test_pmix_plugin_without_libpmix(tree):
    r = run(tree.context(), "pmix")
    assert str(tree.pmix_lib / "libpmix.so") in r.found
    (tree.pmix_lib / "libpmix.so").unlink()
    r = run(tree.context(), "pmix")
    assert r.status == FAIL and str(tree.pmix_lib) in r.found and "libpmix-dev" in r.fix


def test_no_pmix_plugin(tree):
    (tree.plugin_dir / "mpi_pmix_v4.so").unlink()
    r = run(tree.context(), "pmix")
    assert r.status == WARN and "no mpi_pmix*.so" in r.found


# -- host MPI, NVML -------------------------------------------------------------------------

def test_host_mpi_real_host():
    r = run(Context(), "host-mpi")
    if shutil.which("mpicc") is None:
        pytest.skip("no MPI installed here")
    assert r.status == OK and "Open MPI" in r.found


def test_host_mpi_none(tmp_path):
    r = run(Context(mpi_root=str(tmp_path), environ={}), "host-mpi")
    assert r.status == WARN and "no host MPI" in r.found


@needs_root
def test_host_mpi_configured_but_absent(tmp_path):
    cfg = write(tmp_path / "c.yaml", "mpi:\n  installations: [/opt/nompi]\n")
    r = run(Context(environ={"HPCCONT_CONFIG": str(cfg)}), "host-mpi")
    assert r.status == FAIL and "/opt/nompi" in r.found


def test_nvml_absent_is_not_a_failure(tmp_path):
    r = run(Context(nvml_lib=str(tmp_path / "libnvidia-ml.so.1"), dev_dir=str(tmp_path)), "nvml")
    assert r.status == SKIP and "no NVIDIA driver" in r.found
    write(tmp_path / "nvidiactl", "")
    r = run(Context(nvml_lib=str(tmp_path / "libnvidia-ml.so.1"), dev_dir=str(tmp_path)), "nvml")
    assert r.status == WARN


@needs_cc
def test_nvml_loadable(tmp_path):
    """A library with the NVML entry points doctor calls (the driver's own on a GPU node)."""
    lib = cc_shared(tmp_path / "libnvidia-ml.so.1", r"""
#include <string.h>
int nvmlInit_v2(void) { return 0; }
int nvmlShutdown(void) { return 0; }
int nvmlSystemGetDriverVersion(char *buf, unsigned n) { strncpy(buf, "535.104.05", n); return 0; }
int nvmlDeviceGetCount_v2(unsigned *c) { *c = 2; return 0; }
const char *nvmlErrorString(int rc) { return "Unknown Error"; }
""")
    r = run(Context(nvml_lib=str(lib)), "nvml")
    assert "driver 535.104.05, 2 GPU(s)" in r.found
    assert r.status in (OK, WARN)   # WARN only if pynvml is not importable here


# -- the command ----------------------------------------------------------------------------

def doctor_cli(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "HPCCONT_CONFIG")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "hpccont.cli.main", "doctor", *args],
                          capture_output=True, text=True, env=e, cwd=str(helpers.REPO))


def test_cli_lines_json_and_exit_status(tree):
    only = "--only=plugstack,spool-tmpfs,pmix"
    r = doctor_cli("--slurm-conf", str(tree.conf), only)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["OK", "plugstack"], ["OK", "spool-tmpfs"],
                                                    ["OK", "pmix"]]
    tree.write_slurm_conf(drop=("CliFilterPlugins",))
    r = doctor_cli(only + ",cli-filter", env={"SLURM_CONF": str(tree.conf)})
    assert r.returncode == 1
    fail = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1 and fail[0].split()[1] == "cli-filter" and "  -> " in fail[0]
    r = doctor_cli("--json", "--slurm-conf", str(tree.conf), only + ",cli-filter")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["ok"] is False and data["slurm_conf"] == str(tree.conf)
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["cli-filter"]["status"] == FAIL and by_name["cli-filter"]["fix"]
    assert by_name["plugstack"]["status"] == OK


def test_cli_unknown_check():
    r = doctor_cli("--only", "nonsense")
    assert r.returncode == 2 and "unknown check 'nonsense'" in r.stderr


def test_a_crashing_check_is_a_fail_not_a_crash(monkeypatch):
    def broken(ctx):
        raise RuntimeError("boom")
    monkeypatch.setitem(doctor.CHECKS, "nvml", broken)
    results = doctor.run_checks(Context(), ["nvml"])
    assert results[0].status == FAIL and "boom" in results[0].found
    assert doctor.exit_status(results) == 1


# -- byte code ----------------------------------------------------------------------------------

def test_bytecode_of_a_copied_tree(tmp_path):
    """A package copied without byte code WARNs with the compile command; compiled, it is OK; a
    source changed after compiling, or a checked hash-based pyc of an edited source, WARNs."""
    import py_compile
    pkg = tmp_path / "hpccont"
    shutil.copytree(helpers.REPO / "hpccont" / "runtime", pkg / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "__init__.py").write_text("")
    r = run(Context(package_dir=str(pkg)), "bytecode")
    assert r.status == WARN and "every launch compiles them" in r.found, r.line()
    assert "compileall" in r.fix and str(pkg) in r.fix
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pkg)], check=True)
    r = run(Context(package_dir=str(pkg)), "bytecode")
    assert r.status == OK and "modules compiled for" in r.found, r.line()
    edited = pkg / "runtime" / "plan.py"
    edited.write_text(edited.read_text() + "\n# edited\n")
    r = run(Context(package_dir=str(pkg)), "bytecode")
    assert r.status == WARN and "runtime/plan.py" in r.found, r.line()
    py_compile.compile(str(edited), invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    assert run(Context(package_dir=str(pkg)), "bytecode").status == OK
    edited.write_text(edited.read_text() + "# again\n")
    assert run(Context(package_dir=str(pkg)), "bytecode").status == WARN
    py_compile.compile(str(edited),
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    assert run(Context(package_dir=str(pkg)), "bytecode").status == OK


def test_bytecode_of_the_test_install(install):
    """The suite's install is compiled as pip and make install compile theirs."""
    pkg = os.path.join(install["lib"], "hpccont")
    r = run(Context(package_dir=pkg), "bytecode")
    assert r.status == OK, r.line()


@needs_cc
def test_launcher_in_front_of_the_entry_point(install, tmp_path):
    """The C launcher built for this install is OK; the Python entry point alone WARNs with the
    build command; a launcher whose Python is not where it was built for FAILs; none: SKIP."""
    built = {}
    for name, bindir in (("good", install["bin"]), ("broken", "/nonexistent")):
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["make", "-s", "-C", str(helpers.REPO / "launcher"), f"O={d}",
                        f"PY_BINDIR={bindir}"], check=True)
        (d / "hpccont").symlink_to(d / "hpccont-fast")
        built[name] = d
    r = run(Context(bin_dirs=[str(built["good"])]), "launcher")
    assert r.status == OK and "the C launcher (hpccont " in r.found, r.line()
    r = run(Context(bin_dirs=[install["bin"]]), "launcher")
    assert r.status == WARN and "Python entry point" in r.found, r.line()
    assert f"PY_BINDIR={install['bin']}" in r.fix
    r = run(Context(bin_dirs=[str(built["broken"])]), "launcher")
    assert r.status == FAIL and "/nonexistent/hpccont" in r.found, r.line()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(Context(bin_dirs=[str(empty)]), "launcher").status == SKIP
    if os.geteuid() == 0:       # root never runs a launcher someone else could replace
        built["good"].chmod(0o777)
        r = run(Context(bin_dirs=[str(built["good"])]), "launcher")
        assert r.status == FAIL and "not run" in r.found and "writable" in r.found, r.line()


def test_fuse_cache_beside_the_entry_point(install, tmp_path, monkeypatch):
    """The caching adapter beside hpccont and a squashfuse_ll linked with libfuse3: OK, naming
    libdeflate; no libdeflate: WARN; no adapter: WARN with the build line; a server not
    linked with libfuse3: WARN; the high-level server configured: WARN; turned off by the
    site: SKIP."""
    if install["fusecache"] is None:
        pytest.skip("no C compiler or no libfuse3 headers (libfuse3-dev): adapter not built")
    real = shutil.which("squashfuse_ll")
    if real is None:
        pytest.skip("squashfuse_ll not installed")
    no_slurm = str(tmp_path / "no-slurm.conf")      # this node's Slurm is not the subject
    good = tmp_path / "good"
    good.mkdir()
    (good / "hpccont").symlink_to(install["hpccont"])
    (good / "squashfuse_ll").symlink_to(real)
    for d in (tmp_path, good):
        d.chmod(0o755)
    r = run(Context(bin_dirs=(str(good),), slurm_conf=no_slurm), "fuse-cache")
    # the entry point's own directory: where the runtime looks (beside sys.argv[0])
    assert r.status == OK and f"{install['fusecache']}, preloaded into" in r.found, r.line()
    assert "libfuse3.so" in r.found and "gzip blocks by libdeflate.so.0" in r.found
    monkeypatch.setattr(doctor, "LIBDEFLATE", "libdeflate-absent.so.0")    # a node without it
    r = run(Context(bin_dirs=(str(good),), slurm_conf=no_slurm), "fuse-cache")
    assert r.status == WARN and "decompress with zlib" in r.found and "libdeflate" in r.fix
    monkeypatch.undo()
    bare = tmp_path / "bare"        # an entry point with no adapter beside it
    fake_program(bare, "squashfuse_ll", "squashfuse 0.1.105")
    shutil.copy(install["hpccont"], bare / "hpccont")
    r = run(Context(bin_dirs=(str(bare),), slurm_conf=no_slurm), "fuse-cache")
    assert r.status == WARN and "hpccont-fusecache.so" in r.found and "libfuse3-dev" in r.fix
    shutil.copy(install["fusecache"], bare / "hpccont-fusecache.so")
    r = run(Context(bin_dirs=(str(bare),), slurm_conf=no_slurm), "fuse-cache")      # a shell script as server
    assert r.status == WARN and "not linked with libfuse3" in r.found, r.line()
    for text, status in (("runtime:\n  squashfuse: squashfuse\n", WARN),
                         ("runtime:\n  fuse_cache: false\n", SKIP)):
        cfg = tmp_path / "site.yaml"
        cfg.write_text(text)
        r = run(Context(bin_dirs=(str(good),), slurm_conf=no_slurm,
                        environ={"HPCCONT_CONFIG": str(cfg)}),
                "fuse-cache")
        assert r.status == status, r.line()


def test_fuse_cache_beside_the_slurm_plugins_launcher(install, tree):
    """The plugstack's launcher builds the steps' containers: without the adapter beside it,
    WARN naming it and install-plugin; with it, OK naming both places."""
    if install["fusecache"] is None:
        pytest.skip("no C compiler or no libfuse3 headers (libfuse3-dev): adapter not built")
    if shutil.which("squashfuse_ll") is None:
        pytest.skip("squashfuse_ll not installed")
    bin_dirs = (install["bin"], "/usr/bin")
    r = run(tree.context(bin_dirs=bin_dirs), "fuse-cache")
    assert r.status == WARN and "the Slurm plugin's launcher" in r.found, r.line()
    assert str(tree.bin / "hpccont-fusecache.so") in r.found and "install-plugin" in r.fix
    shutil.copy(install["fusecache"], tree.bin / "hpccont-fusecache.so")
    r = run(tree.context(bin_dirs=bin_dirs), "fuse-cache")
    assert r.status == OK and str(tree.bin / "hpccont-fusecache.so") in r.found, r.line()


@pytest.mark.parametrize("key,check,program", [("step", "step-builder", "hpccont-step"),
                                               ("account", "account-writer", "hpccont-account")])
def test_c_programs_beside_the_slurm_plugins_launcher(install, tree, key, check, program):
    """WARN without hpccont-step (every step planned by Python) or hpccont-account (every
    accounting entry written by Python) beside the plugstack's launcher, OK with it, FAIL as
    root when someone else could replace it (the builder runs as each step's user, the
    writer as root)."""
    if install[key] is None:
        pytest.skip(f"no C compiler: {program} not built")
    path = tree.bin / program
    r = run(tree.context(), check)
    assert r.status == WARN and str(path) in r.found and "install-plugin" in r.fix, r.line()
    shutil.copy(install[key], path)
    path.chmod(0o755)
    r = run(tree.context(), check)
    assert r.status == OK and str(path) in r.found, r.line()
    path.chmod(0o775)
    os.chown(path, 0, 1)
    r = run(tree.context(), check)
    assert r.status == FAIL and str(path) in r.found, r.line()