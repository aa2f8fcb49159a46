"""Autobahn|Testsuite conformance harness: ``python -m conformance.run`` (see docs/conformance.md)."""
