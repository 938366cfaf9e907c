"""The clockfleet Grafana dashboard, one module per group of rows (build_dashboard.py runs it)."""
