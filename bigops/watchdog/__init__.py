"""The watchdog: pure detectors over the run directory's records, a policy, actions (``bigops watch``)."""
