"""otlp stage."""
