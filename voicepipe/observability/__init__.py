"""The pipeline's health as figures: read once (probe.py), served to Prometheus (exporter.py)."""
