"""Command-line front ends.  Only entry points import this package."""
