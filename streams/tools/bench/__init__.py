"""`rpcache bench`: throughput, freshness, reads and memory, measured side by side.

Figures on a shared machine move with its load, so every comparison the
report makes (ours / baseline, ours / ceiling, Redis / PostgreSQL reads) is
between runs of the same invocation, minutes apart. Modules:

- `workload`: roleplay traffic as Kafka-ready bytes, and what Redis must hold after it;
- `env`: a database, Redis db, topic prefix and worker process per benchmark;
- `throughput`: our worker, the hand-batched and naive baselines and the consume-only ceiling;
- `cpu`: CPU time per event of a consumer and of PostgreSQL (`/proc`, `getrusage`);
- `freshness`, `reads`, `memory`: the other measurements, on a live worker;
- `stats`, `report`: pure arithmetic, `bench.json` and the tables;
- `runner`, `main`: the run in order, and the command.
"""
