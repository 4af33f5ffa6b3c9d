"""Operations: what ops and developers look at while nudge runs.

Everything here reads the running processes from the outside (their /metrics
endpoints, Prometheus's HTTP API) and never imports the stream worker, the
triggers or the delivery code: it sees nudge the way Grafana and an on-call
engineer do.
"""
