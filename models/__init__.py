"""Online models (churn risk, customer value, RFM segments, next-best-offer): the pure core.

Everything here is a function of (state, input, config) or a River model
wrapped to be one: no Kafka, no Redis, no Faust, no clock. The stream
worker scores with it (streams/model_stage.py), the trainer learns with
it; both talk through topics (training examples, signed snapshots).
"""
