"""Who runs inside the container: the same user as outside.

The container's /etc/passwd and /etc/group are the image's own files plus one entry for the
user and their primary group, so that ``id``, ``whoami`` and ``~`` work for a user the image has
never heard of.  The files are generated here (plain text) and bound over the image's by apply.
"""
from __future__ import annotations

import grp
import os
import pwd

from .plan_types import Identity


def current_identity(home_override: str | None = None) -> Identity:
    uid, gid = os.getuid(), os.getgid()
    try:
        pw = pwd.getpwuid(uid)
        user, home, shell, gecos = pw.pw_name, pw.pw_dir, pw.pw_shell, pw.pw_gecos
    except KeyError:  # a uid without passwd entry (e.g. from a directory service that is down)
        user = os.environ.get("USER") or f"uid{uid}"
        home, shell, gecos = os.environ.get("HOME", "/"), "/bin/sh", ""
    return Identity(uid=uid, gid=gid, user=user, home=home_override or home,
                    shell=shell or "/bin/sh", gecos=gecos)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"group{gid}"


def passwd_content(image_passwd: str, ident: Identity) -> str:
    """The image's passwd without any entry for our uid or name, plus ours."""
    keep = []
    for line in image_passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and (fields[0] == ident.user or fields[2] == str(ident.uid)):
            continue
        keep.append(line)
    keep.append(f"{ident.user}:x:{ident.uid}:{ident.gid}:{ident.gecos}:{ident.home}:{ident.shell}")
    return "\n".join(keep) + "\n"


def group_content(image_group: str, ident: Identity) -> str:
    name = _group_name(ident.gid)
    keep = []
    for line in image_group.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and (fields[0] == name or fields[2] == str(ident.gid)):
            continue
        keep.append(line)
    keep.append(f"{name}:x:{ident.gid}:{ident.user}")
    return "\n".join(keep) + "\n"
