"""``Bootstrap: scratch``: an empty image; %setup and %files put everything in."""


def bootstrap(stage, rootfs, ctx):
    return None
