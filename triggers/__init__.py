"""The trigger service: campaign rules on each user's live state, under guardrails.

Data flows in one direction: the stream worker writes each user's hash to
Redis and appends the user to a changes stream; the trigger service reads
those streams, decides, and writes its decisions to the `decisions` topic
(the audit log) and the messages to send to the `notifications` topic (the
outbox that `nudge deliver` drains).

Pure core (no Redis, no Kafka, no clock but the `now_ms` given):

- `triggers.rules`: the rule language (deploy/config/rules.yaml), loaded
  and checked with the line of every error;
- `triggers.guardrails`: holdout, quiet hours in the user's time zone,
  channel choice, the cap and cool-down buckets;
- `triggers.decide`: one user's state in, the decisions and the
  re-evaluations to schedule out.

Shells: `triggers.store` (the Redis scripts that enforce dedupe and caps
atomically, the shared schedule, the per-user decision log) and
`triggers.service` (`nudge triggers`); `triggers.why` is `nudge why`.
"""
