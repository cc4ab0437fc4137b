"""``module load`` inside containers: what the planner adds when ``modules.tree`` is configured.

Lmod is a Lua program, so besides the module trees and Lmod's own directory the container needs
a Lua interpreter with the C modules Lmod uses (posix, lfs, term).  The host's are bound in,
read-only, at private paths: the interpreter's path in Lmod's ``#!`` line gets a small script
that runs the host interpreter with the host libraries it needs on ``LD_LIBRARY_PATH``, so
nothing else in the container sees those libraries.  The container must bring a glibc and
``/bin/sh`` (C libraries of the glibc family are not bound: mixing two glibcs in one process
does not work); Tcl modulefiles additionally need ``tclsh`` in the image.

``BASH_ENV`` (non-interactive bash) and ``ENV`` (interactive sh) point at Lmod's init so that
``module`` exists in ``shell`` and in scripts run inside the image.
"""
import glob
import os
from typing import Dict, Iterable, List, Optional, Set

from ..runtime.plan_types import HostAdditions, Mount

PRIVATE = "/.hpccont/lmod"
# Never bound from the host: the container's own C library must serve these.
LIBC_FAMILY = ("libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "ld-linux",
               "libresolv.so", "libutil.so")
LIB_DIRS = ("/lib/{triplet}", "/usr/lib/{triplet}", "/lib64", "/usr/lib64", "/lib", "/usr/lib")

LUA_WRAPPER = """#!/bin/sh
# Lmod's interpreter from the host, with only its own libraries added (hpccont modules.tree).
LD_LIBRARY_PATH={lib}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}} exec {lua} "$@"
"""


def _tree_paths(trees: Iterable) -> List[str]:
    """``modules.tree`` entries: a path, or a mapping with ``path`` (str entries are the norm)."""
    out = []
    for t in trees:
        path = t.get("path") if isinstance(t, dict) else t
        if isinstance(path, str) and path:
            out.append(path.rstrip("/") or "/")
    return out


def interpreter(lmod_cmd: str) -> Optional[str]:
    """The interpreter named in the ``#!`` line of Lmod's command (``#!/usr/bin/env lua`` too)."""
    try:
        with open(lmod_cmd, "rb") as f:
            line = f.readline(256).decode("utf-8", "replace")
    except OSError:
        return None
    if not line.startswith("#!"):
        return None
    words = line[2:].split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        import shutil
        return shutil.which(words[1])
    return words[0]


def elf_needed(path: str) -> List[str]:
    from ..elf import file_dynamic
    dyn = file_dynamic(path)
    return dyn.needed if dyn else []


def _triplet() -> str:
    found = glob.glob("/usr/lib/*-linux-gnu*")
    return os.path.basename(found[0]) if found else "x86_64-linux-gnu"


def find_library(name: str, triplet: str) -> Optional[str]:
    for d in LIB_DIRS:
        p = os.path.join(d.format(triplet=triplet), name)
        if os.path.exists(p):
            return p
    return None


def library_closure(elves: Iterable[str], triplet: str) -> Dict[str, str]:
    """soname -> host path for everything ``elves`` need, minus the C library family."""
    found: Dict[str, str] = {}
    todo, seen = list(elves), set()  # type: List[str], Set[str]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in elf_needed(path):
            if name in found or name.startswith(LIBC_FAMILY):
                continue
            lib = find_library(name, triplet)
            if lib:
                found[name] = os.path.realpath(lib)
                todo.append(lib)
    return found


def lua_module_dirs(lua: str, triplet: str) -> List[str]:
    """Where ``require`` finds Lua and C modules for this interpreter (``lua5.3`` -> 5.3)."""
    version = os.path.basename(lua).replace("lua", "") or "5.3"
    dirs = [f"/usr/share/lua/{version}", f"/usr/lib/{triplet}/lua/{version}",
            f"/usr/local/share/lua/{version}", f"/usr/local/lib/lua/{version}"]
    return [d for d in dirs if os.path.isdir(d)]


def _c_modules(dirs: List[str]) -> List[str]:
    return sorted(p for d in dirs for p in glob.glob(os.path.join(d, "**", "*.so"), recursive=True))


def _outside_targets(dirs: List[str]) -> List[str]:
    """Real paths of symlinks under ``dirs`` that point outside all of them."""
    inside = tuple(d.rstrip("/") + "/" for d in dirs)
    found: Set[str] = set()
    for d in dirs:
        for top, subdirs, files in os.walk(d):
            for name in files + subdirs:
                path = os.path.join(top, name)
                if os.path.islink(path):
                    real = os.path.realpath(path)
                    if not real.startswith(inside) and os.path.exists(real):
                        found.add(real)
    return sorted(found)


def module_tree_additions(config: dict, environ: Optional[Dict[str, str]] = None) -> HostAdditions:
    """Binds and environment that make ``module`` work inside the container.

    Empty when ``modules.tree`` is not set.  Called by the planner for every launch; it reads a
    handful of small files and ELF headers, no subprocess.
    """
    section = config.get("modules", {}) if config else {}
    trees = _tree_paths(section.get("tree") or [])
    add = HostAdditions()
    if not trees:
        return add
    bound = [t for t in trees if os.path.isdir(t)]
    for t in trees:
        if t not in bound:
            add.warnings.append(f"modules.tree {t} does not exist on this node: not bound")
            continue
        add.mounts.append(Mount("bind", t, t, readonly=True, why="modules.tree"))
    init = (section.get("lmod_init") or "/usr/share/lmod/lmod/init").rstrip("/")
    prefix = os.path.dirname(init)
    lmod_cmd = os.path.join(prefix, "libexec", "lmod")
    if not os.path.isdir(init) or not os.path.isfile(lmod_cmd):
        add.warnings.append(f"modules.lmod_init {init}: no Lmod there; 'module' will not work "
                            "inside the container")
        return add
    # Lmod's init scripts name its own paths (e.g. /usr/share/lmod/lmod), often a symlink.
    add.mounts.append(Mount("bind", prefix, os.path.realpath(prefix), readonly=True,
                            why="modules: Lmod"))
    lua = interpreter(lmod_cmd)
    if lua and os.path.isfile(lua):
        triplet = _triplet()
        mod_dirs = lua_module_dirs(lua, triplet)
        for d in mod_dirs:
            add.mounts.append(Mount("bind", d, d, readonly=True, why="modules: Lua modules"))
        # Lmod's own C modules (tcl2lua.so) live in <prefix>/lib, a link out of the prefix.
        lmod_lib = os.path.realpath(os.path.join(prefix, "lib"))
        lmod_libs = [lmod_lib] if os.path.isdir(lmod_lib) else []
        for real in _outside_targets([os.path.realpath(prefix)]):
            add.mounts.append(Mount("bind", real, real, readonly=True, optional=True,
                                    why="modules: Lmod link target"))
        libs = library_closure([os.path.realpath(lua)] + [os.path.realpath(m) for m in
                                                         _c_modules(mod_dirs + lmod_libs)], triplet)
        for name, real in sorted(libs.items()):
            add.mounts.append(Mount("bind", f"{PRIVATE}/lib/{name}", real, readonly=True,
                                    why="modules: Lua library"))
        # Debian links modules out of the versioned directories (posix.so -> ../../liblua5.3-
        # posix.so.1, 5.3/posix/init.lua -> ../../5.1/posix/init.lua): bind each link's target
        # at its own path so the link resolves inside the container too.
        for real in _outside_targets(mod_dirs):
            add.mounts.append(Mount("bind", real, real, readonly=True, optional=True,
                                    why="modules: Lua module link target"))
        private_lua = f"{PRIVATE}/bin/{os.path.basename(lua)}"
        add.mounts.append(Mount("bind", private_lua, os.path.realpath(lua), readonly=True,
                                why="modules: Lua interpreter"))
        # The launcher must be executable: a "file" mount whose content starts with "#!".
        add.mounts.append(Mount("file", lua, readonly=True, why="modules: Lua launcher",
                                content=LUA_WRAPPER.format(lib=f"{PRIVATE}/lib", lua=private_lua)))
    add.env.update({"MODULEPATH": ":".join(bound), "MODULESHOME": prefix,
                    "BASH_ENV": os.path.join(init, "bash"), "ENV": os.path.join(init, "sh")})
    return add
