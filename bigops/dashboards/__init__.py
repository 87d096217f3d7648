"""Grafana dashboards, Prometheus alert and recording rules, their ``promtool`` tests, an Alertmanager
example and the on-call runbooks, all generated from code so that they use exactly the metric names
``bigops.metrics.names`` declares.

``bigops dashboards export DIR`` and ``bigops alerts render FILE`` write them; the committed copies under
``dashboards/`` and ``runbooks/`` are re-generated and compared by ``tests/unit/test_dashboards.py``.
"""
