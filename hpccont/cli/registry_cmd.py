"""``hpccont registry login|logout|list``: credentials for OCI registries.

    hpccont registry login [-u USER] [--password-stdin | -p PASS] [--nohttps] REGISTRY
    hpccont registry logout REGISTRY
    hpccont registry list

REGISTRY is a host[:port] (``docker://HOST`` and ``oras://HOST`` are accepted too; Docker Hub
is docker.io).  login checks the credentials against the registry before storing them in
~/.hpccont/docker-config.json ($HPCCONT_AUTH_FILE), mode 0600, in Docker's config.json
format, or, as docker login does, through the credential helper that file or Docker's
config.json names for the registry (credHelpers, credsStore); logout erases them there too.
Pulls and pushes also read ~/.docker/config.json and HPCCONT_DOCKER_USERNAME/PASSWORD.
"""
import argparse
import os
import sys
from typing import List

from ..errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see 'hpccont registry --help')")


def _host(text: str) -> str:
    from ..image.registry import reference
    for s in ("docker://", "oras://", "https://", "http://"):
        if text.startswith(s):
            text = text[len(s):]
    text = text.rstrip("/").split("/", 1)[0]
    if not text:
        raise UsageError("expected a registry host[:port]")
    return reference.DOCKER_HUB if text.lower() in reference.HUB_ALIASES else text


def main(name: str, argv: List[str]) -> int:
    p = _Parser(prog="hpccont registry", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    login = sub.add_parser("login", help="check and store credentials for a registry")
    login.add_argument("registry", metavar="REGISTRY")
    login.add_argument("-u", "--username", default=None)
    login.add_argument("-p", "--password", default=None)
    login.add_argument("--password-stdin", action="store_true")
    login.add_argument("--nohttps", action="store_true")
    logout = sub.add_parser("logout", help="forget the credentials of a registry")
    logout.add_argument("registry", metavar="REGISTRY")
    sub.add_parser("list", help="registries with stored credentials")
    for sp in (p, login, logout):
        sp.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    from ..image.registry import auth
    if ns.action == "list":
        for host, user in auth.list_logins():
            print(f"{host}\t{user}")
        return 0
    host = _host(ns.registry)
    if ns.action == "logout":
        if not auth.remove_login(host):
            raise UsageError(f"{host}: no stored credentials")
        print(f"removed credentials for {host}")
        return 0
    user = ns.username
    if user is None:
        if not sys.stdin.isatty() or ns.password_stdin:
            raise UsageError("--username is needed")
        user = input("Username: ").strip()
    if ns.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif ns.password is not None:
        password = ns.password
    elif sys.stdin.isatty():
        import getpass
        password = getpass.getpass("Password: ")
    else:
        raise UsageError("give the password with --password-stdin (or -p)")
    if not user or not password:
        raise UsageError("username and password must not be empty")
    from ..image.registry.client import Client
    from ..image.registry.reference import DOCKER_HUB, DOCKER_HUB_API
    client = Client(host, api_host=DOCKER_HUB_API if host == DOCKER_HUB else host,
                    nohttps=ns.nohttps, creds=(user, password), environ=os.environ)
    try:
        client.ping()
    finally:
        client.close()
    where = auth.store_login(host, (user, password))
    print(f"credentials for {host} stored {where}")
    return 0
