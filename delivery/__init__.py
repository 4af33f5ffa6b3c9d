"""Delivery: the outbox topic `notifications` -> push (FCM), SMS (Twilio), webhook.

Pure core, effects at the edge:

| module            | what it is                                                       | I/O |
|-------------------|------------------------------------------------------------------|-----|
| results.py        | `SendResult`, the one answer every provider adapter gives         | no  |
| policy.py         | backoff with full jitter, Retry-After, the token bucket           | no  |
| plan.py           | what to do with one outbox message and with each provider answer  | no  |
| ledger.py         | the send ledger: decision rule, its Lua twin, Redis and fakes     | Redis |
| fcm.py, twilio.py, webhook.py | one adapter per provider: pure request/response parts plus a thin aiohttp sender | HTTP |
| metrics.py        | every `nudge_delivery_*` metric                                   | no  |
| worker.py         | `nudge deliver`: Kafka consumer group shell around the above      | Kafka, Redis, HTTP |
| mock_providers.py | `nudge mock-providers`: FCM/Twilio/webhook wire formats, faults   | HTTP server |
| credentials.py    | throwaway Google service-account files for local runs and tests   | file |

The package imports only the `nudge` kernel (import-linter keeps it so).
"""
