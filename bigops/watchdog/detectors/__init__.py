"""Detectors: pure functions (or small state machines) of records and an injected clock. No I/O here."""
