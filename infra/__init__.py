"""Infrastructure beside template.yaml: the operator kit in `infra.monitoring`."""
