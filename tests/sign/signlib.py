"""Helpers shared by the signing tests (a module of its own: "conftest" names a different file
in every test directory)."""
from pathlib import Path


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))
