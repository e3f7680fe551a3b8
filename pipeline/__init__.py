"""What crosses the wire: message schemas, frame codec, Kafka/Redis adapters, producers."""
