"""Plain helpers of the escalation tests (a module of its own: a full run has several conftest
modules, and ``from conftest import`` would find another suite's)."""

SECRET = "SECRET-CONTENT-d41d8c"     # in every file the test user must not read


def leaked(text: str) -> bool:
    return SECRET in text
