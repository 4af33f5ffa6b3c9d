"""Faust wiring: the app, its topics and table, the agents, the dead-letter
queue, the Redis feature store and the worker's metrics. Domain logic lives
in features/; this package only moves bytes between Kafka, the fold and Redis."""
