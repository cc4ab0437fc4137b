"""The one ELF reader: identity, program headers, the dynamic section, symbols.

Used on the launch hot path (runtime/prefetch.py warms a command's loader and libraries), by the
host adapters (MPI ABI checks, NVIDIA library selection), the builder (is busybox static?) and
``hpccont doctor`` (the Slurm version a SPANK plugin was built for).  Stdlib ``struct`` and ``os``
only.  Every reader takes ``pread(size, offset) -> bytes`` so that callers holding a descriptor
(the hot path reads only the pages it needs) and callers holding a whole file share the code.
A file that is not ELF, or is cut short, reads as "nothing": None, or empty lists.
"""
from __future__ import annotations

import os
import struct

from .record import factory, record

TYPE_CHECKING = False   # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Sequence, Tuple
    Pread = Callable[[int, int], bytes]

MAGIC = b"\x7fELF"
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
SHT_SYMTAB, SHT_NOBITS, SHT_DYNSYM = 2, 8, 11

# class (1: 32-bit, 2: 64-bit) -> (phoff at, phentsize/phnum at, shoff at, shentsize/shnum at,
#                                  program header, dynamic entry, section header, symbol formats)
LAYOUT = {
    1: (0x1C, 0x2A, 0x20, 0x2E, "IIIIIIII", "iI", "IIIIIIIIII", "IIIBBH"),
    2: (0x20, 0x36, 0x28, 0x3A, "IIQQQQQQ", "qQ", "IIQQQQIIQQ", "IBBHQQ"),
}


@record
class ElfId:
    """What must match for a library to load into a process: class, byte order, machine."""
    elf_class: int     # 1 = 32-bit, 2 = 64-bit
    data: int          # 1 = little endian, 2 = big endian
    machine: int       # e_machine (62 = x86-64, 183 = aarch64, ...)

    def describe(self) -> str:
        return f"{ {1: '32-bit', 2: '64-bit'}.get(self.elf_class, '?') } machine {self.machine}"


@record
class Dynamic:
    """What the dynamic loader reads: PT_INTERP and the DT_NEEDED/SONAME/RUNPATH entries."""
    interp: str = ""
    needed: List[str] = factory(list)
    soname: str = ""
    runpath: List[str] = factory(list)


def parse_id(head: bytes) -> Optional[ElfId]:
    """ElfId from the first 20 bytes of a file, or None when it is not ELF."""
    if len(head) < 20 or head[:4] != MAGIC or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    return ElfId(head[4], head[5], int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"))


def file_id(path: str) -> Optional[ElfId]:
    try:
        with open(path, "rb") as f:
            return parse_id(f.read(20))
    except OSError:
        return None


def _program_headers(pread: Pread, head: bytes) -> List[Tuple[int, int, int, int]]:
    """(type, offset, vaddr, filesz) of each program header."""
    e = "<" if head[5] == 1 else ">"
    ph_at, ph_n_at, _, _, ph_fmt, _, _, _ = LAYOUT[head[4]]
    phoff, = struct.unpack_from(e + ("Q" if head[4] == 2 else "I"), head, ph_at)
    phentsize, phnum = struct.unpack_from(e + "HH", head, ph_n_at)
    table = pread(phentsize * phnum, phoff)
    out = []
    for i in range(phnum):
        f = struct.unpack_from(e + ph_fmt, table, i * phentsize)
        # 64-bit: type, flags, offset, vaddr, paddr, filesz; 32-bit: type, offset, vaddr, paddr, filesz
        out.append((f[0], f[2], f[3], f[5]) if head[4] == 2 else (f[0], f[1], f[2], f[4]))
    return out


def read_dynamic(pread: Pread, head: bytes) -> Optional[Dynamic]:
    """The loader's view of an ELF file (``head``: its first 64 bytes); None if not ELF."""
    if parse_id(head) is None or len(head) < 64:
        return None
    try:
        phdrs = _program_headers(pread, head)
        out = Dynamic()
        loads = [(vaddr, off, size) for t, off, vaddr, size in phdrs if t == PT_LOAD]
        dynamic = None
        for t, off, _vaddr, size in phdrs:
            if t == PT_INTERP:
                out.interp = pread(min(size, 4096), off).split(b"\0")[0].decode()
            elif t == PT_DYNAMIC:
                dynamic = (off, size)
        if dynamic is None:
            return out
        e = "<" if head[5] == 1 else ">"
        fmt = e + LAYOUT[head[4]][5]
        data = pread(min(dynamic[1], 64 * 1024), dynamic[0])
        entries = []
        for i in range(0, len(data) - struct.calcsize(fmt) + 1, struct.calcsize(fmt)):
            tag, val = struct.unpack_from(fmt, data, i)
            if tag == DT_NULL:
                break
            entries.append((tag, val))
        tags = dict(entries)
        # DT_STRTAB is an address: the PT_LOAD segment holding it maps it to a file offset.
        strtab = tags.get(DT_STRTAB)
        where = next((strtab - vaddr + off for vaddr, off, size in loads
                      if strtab is not None and vaddr <= strtab < vaddr + size), None)
        if where is None:
            return out
        table = pread(min(tags.get(DT_STRSZ, 256 * 1024), 256 * 1024), where)

        def string(o: int) -> str:
            return table[o:table.index(b"\0", o)].decode("utf-8", "replace") if o < len(table) else ""
        for tag, val in entries:
            if tag == DT_NEEDED:
                out.needed.append(string(val))
            elif tag == DT_SONAME:
                out.soname = string(val)
            elif tag in (DT_RPATH, DT_RUNPATH):
                out.runpath += [p for p in string(val).split(":") if p]
        return out
    except (struct.error, ValueError, OSError):
        return None


def fd_reader(fd: int) -> Pread:
    return lambda size, offset: os.pread(fd, size, offset)


def bytes_reader(data: bytes) -> Pread:
    return lambda size, offset: data[offset:offset + size]


def file_dynamic(path: str) -> Optional[Dynamic]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return read_dynamic(fd_reader(fd), os.pread(fd, 64, 0))
    finally:
        os.close(fd)


def symbols(data: bytes, names: Sequence[str]) -> Dict[str, bytes]:
    """``{name: bytes}`` of the named data symbols (the dynamic symbol table, then the full one),
    each read from the section that holds it.  ValueError when the file is not ELF."""
    if parse_id(data[:20]) is None or len(data) < 52:
        raise ValueError("not an ELF file")
    e = "<" if data[5] == 1 else ">"
    _, _, sh_at, sh_n_at, _, _, sh_fmt, sym_fmt = LAYOUT[data[4]]
    try:
        shoff, = struct.unpack_from(e + ("Q" if data[4] == 2 else "I"), data, sh_at)
        shentsize, shnum = struct.unpack_from(e + "HH", data, sh_n_at)
        # (name, type, flags, addr, offset, size, link, info, align, entsize)
        sections = [struct.unpack_from(e + sh_fmt, data, shoff + i * shentsize)
                    for i in range(shnum)]
    except struct.error:
        raise ValueError("truncated ELF file")
    found: Dict[str, bytes] = {}
    wanted = set(names)
    for table_type in (SHT_DYNSYM, SHT_SYMTAB):
        for sec in sections:
            if sec[1] != table_type or sec[6] >= len(sections):
                continue
            strs = sections[sec[6]]
            for off in range(sec[4], sec[4] + sec[5], sec[9] or (24 if data[4] == 2 else 16)):
                try:
                    sym = struct.unpack_from(e + sym_fmt, data, off)
                except struct.error:
                    break
                # 64-bit: name, info, other, shndx, value, size; 32-bit: name, value, size, info, other, shndx
                name_off, value, size, shndx = ((sym[0], sym[4], sym[5], sym[3]) if data[4] == 2
                                                else (sym[0], sym[1], sym[2], sym[5]))
                start = strs[4] + name_off
                stop = data.find(b"\0", start)
                name = data[start:stop].decode("utf-8", "replace") if stop >= 0 else ""
                if name not in wanted or name in found or not 0 < shndx < len(sections):
                    continue
                holder = sections[shndx]
                if holder[1] == SHT_NOBITS:
                    found[name] = bytes(size)
                else:
                    at = holder[4] + value - holder[3]
                    found[name] = data[at:at + size]
        if wanted <= set(found):
            break
    return found


def is_static(path: str) -> bool:
    """An ELF file without PT_INTERP (it needs no dynamic loader)."""
    dyn = file_dynamic(path)
    return dyn is not None and not dyn.interp
