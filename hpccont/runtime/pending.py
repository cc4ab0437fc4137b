"""The lock of an elected first launch, handed over by launcher/fast.c.

When several identical launches start at once with no recipe to replay (a job starting 32
interpreters, or the first of them after the shared container's keeper left), fast.c lets one
of them run Python and makes the others wait: the one holds an exclusive flock on the user's
``fast-KEY.pending`` and passes it here at descriptor ``FD``; the others wait for a shared lock
on the same file, then look for the recipe again, which this launch has written by then, and
join in C.  So the lock must go as soon as the recipe is written, or when this process execs
its command (close-on-exec, set by ``adopt``), or when it only waits for the command as a
parent (apply._wait_and_exit_as): never later, or the others would wait for the command.
The file goes with the lock (a waiter holds it open; a later launch finds the recipe, or makes
a new file and runs Python itself), so launches that are never recorded leave nothing behind.
Only ``os``: this is on every launch's path.
"""
import os

FD = 1023                 # launcher/fast.c PENDING_FD
_held = None              # (its directory's descriptor, its name) while this launch holds it


def adopt() -> None:
    """At the start of a launch: make the handed lock close at exec.  A descriptor the caller
    itself passed at this number (not one of the store's .pending files) is left as it is."""
    global _held
    try:
        target = os.readlink(f"/proc/self/fd/{FD}")
    except OSError:
        return
    name = os.path.basename(target)
    if not (name.startswith("fast-") and name.endswith(".pending")):
        return
    os.set_inheritable(FD, False)
    try:
        # by descriptor: release() may come after pivot_root, where the path is not the file
        _held = (os.open(os.path.dirname(target), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC),
                 name)
    except OSError:
        _held = (-1, name)


def release() -> None:
    """The others may go on: the recipe is written, or this launch will write none."""
    global _held
    if _held is None:
        return
    (dir_fd, name), _held = _held, None
    for step in (lambda: os.unlink(name, dir_fd=dir_fd), lambda: os.close(dir_fd),
                 lambda: os.close(FD)):
        try:
            step()
        except OSError:
            pass
