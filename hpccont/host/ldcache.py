"""The host's dynamic linker cache and ELF identities.

``--nv`` must bind the driver libraries the host's own programs would load, so it asks the
same authority the dynamic linker uses: the ldconfig cache (``ldconfig -p``).  A cache lists
every architecture installed (x86-64 and i386 multiarch, for example); only libraries whose
ELF class, byte order and machine match the host's can be loaded by the container's programs,
so each candidate's ELF header is checked against the host interpreter's.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import List, Optional

from ..elf import ElfId, file_id
from ..errors import HostError
from ..record import record

# "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1"
# glibc may append ", OS ABI: Linux 3.2.0" or ", hwcap: ..." inside the parentheses.
_LINE = re.compile(r"^\s*(?P<name>\S+)\s+\((?P<flags>[^)]*)\)\s+=>\s+(?P<path>/.*\S)\s*$")


@record
class LdCacheEntry:
    name: str        # the name programs ask for, e.g. libcuda.so.1
    flags: str       # ldconfig's description, e.g. "libc6,x86-64"
    path: str        # where the dynamic linker would find it


def parse_ldconfig_output(text: str) -> List[LdCacheEntry]:
    """Entries of ``ldconfig -p`` in cache order (the order the dynamic linker prefers)."""
    entries = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            entries.append(LdCacheEntry(m.group("name"), m.group("flags").strip(), m.group("path")))
    return entries


def ldconfig_argv(ldconfig: str) -> List[str]:
    """The site setting ``nvidia.ldconfig`` is a command: a program, optionally with arguments
    (``/sbin/ldconfig -C /opt/driver/ld.so.cache`` reads another cache).  ``-p`` is appended."""
    argv = shlex.split(ldconfig or "/sbin/ldconfig")
    if not argv:
        argv = ["/sbin/ldconfig"]
    return argv + ["-p"]


def read_ldcache(ldconfig: str) -> List[LdCacheEntry]:
    argv = ldconfig_argv(ldconfig)
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=30, env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except FileNotFoundError:
        raise HostError(f"nv: ldconfig program {argv[0]} not found (site setting nvidia.ldconfig)")
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostError(f"nv: cannot run {argv[0]}: {e}")
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["failed"])[-1]
        raise HostError(f"nv: {' '.join(argv)}: {msg}")
    return parse_ldconfig_output(r.stdout)


def host_elf_id() -> Optional[ElfId]:
    """The identity of this process's own executable: the ABI the host's programs use."""
    for exe in ("/proc/self/exe", os.path.realpath(sys.executable)):
        found = file_id(exe)
        if found:
            return found
    return None
