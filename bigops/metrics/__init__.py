"""Prometheus metrics of the watchdog: names declared once (``names.py``), filled from a scan (``exporter.py``)."""
