"""Real servers for the tests, on 127.0.0.1 and free ports: SeaweedFS (S3), Pushgateway, Prometheus.

Run one by hand on a CPU: ``python -m tests.services pushgateway`` (Ctrl-C stops it).
"""
