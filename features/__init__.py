"""Pure domain logic: feature definitions, the per-user fold, the batch
reference and the lifecycle rules. No Kafka, no Faust, no Redis here
(an import-linter contract in pyproject.toml keeps it so)."""
