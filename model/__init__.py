"""SimpleNet anomaly detection: pure PyTorch + numpy, no transport or settings."""
