"""Producers: everything that puts events into Kafka (simulator, replay,
HTTP collector, dataset import) and the one Kafka producer they share."""
