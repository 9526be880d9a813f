"""The eformws benchmark harness (issue 7): `python -m bench --help`; docs/performance.md."""
