"""The health function: /health, /health/live, /health/ready, /health/detailed (`health.app`)."""
