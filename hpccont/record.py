"""``@record``: a plain-data class decorator for the launch hot path.

The standard ``dataclasses`` module imports ``inspect`` (and with it most of the stdlib's
introspection machinery): ~6 ms per ``hpccont exec``, a third of the whole launch budget.  The
request and plan classes need only what this gives them: an ``__init__`` taking fields by
position or keyword with defaults, ``__repr__``, ``__eq__`` and ``to_dict``.  Fields are the
class's annotations in order; a default is the class attribute of the same name; a mutable
default is written ``factory(list)`` and built fresh for every instance.
"""


class factory:
    """Default made by calling ``make()`` for each new instance (like default_factory)."""
    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


_MISSING = object()


def record(cls):
    names = [n for n in cls.__dict__.get("__annotations__", {})]
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    required = [n for n in names if n not in defaults]
    if any(names.index(r) > names.index(d) for r in required for d in defaults):
        raise TypeError(f"{cls.__name__}: fields without default must come first")

    def __init__(self, *args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} arguments, got {len(args)}")
        values = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {k!r}")
            if k in values:
                raise TypeError(f"{cls.__name__}() got multiple values for argument {k!r}")
            values[k] = v
        for n in names:
            if n in values:
                v = values[n]
            elif n in defaults:
                d = defaults[n]
                v = d.make() if isinstance(d, factory) else d
            else:
                raise TypeError(f"{cls.__name__}() missing required argument {n!r}")
            setattr(self, n, v)

    def __repr__(self):
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{cls.__name__}({inner})"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    def to_dict(self):
        return {n: _plain(getattr(self, n)) for n in names}

    for n in defaults:
        delattr(cls, n)   # instances always carry their own value
    cls.__init__, cls.__repr__, cls.__eq__, cls.__hash__ = __init__, __repr__, __eq__, None
    if "to_dict" not in cls.__dict__:
        cls.to_dict = to_dict
    cls.__record_fields__ = tuple(names)
    return cls


def _plain(value):
    if hasattr(value, "__record_fields__"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
