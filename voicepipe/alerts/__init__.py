"""Built-in health checks stored as deduplicated alerts (voicepipe.alerts.evaluate, `voicepipe alerts`)."""
