"""End-to-end figures on the embedded broker and on local Apache Kafka, in one run, beside the Redis-lock peer.

    .venv/bin/python -m bench.pipeline [--brokers embedded,kafka] [--events N] [--rate 500 | --rates 100,500]
        [--seconds 20] [--workers 1,2] [--latency-workers N] [--warm-up-rounds 3] [--conversations-alone]
        [--peer/--no-peer] [--peer-runs 1]
        [--profile py-spy|cprofile] [--skip ingest,latency,fold,baselines,peer]

Parts 1-4 run once per broker of --brokers (default both), one broker after the other, with the same workload
and the same embedded PostgreSQL: `embedded` is the Tansu broker (streams/embedded.py); `kafka` is one node of
local Apache Kafka (streams/local_kafka.py) with Kafka's own server heap and GC flags (SERVER_JVM), Baton on it
with broker_profile "kafka" and env "development" (the dev secrets, as `baton dev --broker kafka`). Where Kafka
cannot start (no java or mvn, Maven Central unreachable…) one line says the kafka broker was skipped and why,
and the rest goes on.

0. warm-up: (1)'s load, unmeasured, --warm-up-rounds times (default 3) on a runtime of its own, before anything
   is measured on a broker. A broker in service compiled its hot paths long ago; the Kafka JVM started here has
   not, and its JIT compiler threads are over half of its CPU in a first round (each round prints the broker's
   CPU and its JIT compiler's share; (1)'s notes say the share left in (1)). --warm-up-rounds 0: a cold broker;
1. ingest → projection: N conversation.message.received events through POST /v1/events (batches of
   500) until sum(messages_received) = N in PostgreSQL, and until sum(replies_sent) = N; once per worker
   count of --workers (default 1), each on a fresh runtime (`Runtime(settings, workers=count)`: its own
   app id, topic prefix and database, the same broker and PostgreSQL); with --conversations-alone [ROUNDS],
   2 × ROUNDS + 1 more times on each broker after (2) (default 2 rounds: 5 runs), for the six-domain aim: on
   runtimes that register the conversations domain alone (policies always is) and all six in turn, alone first
   and last. The broker warms as the bench goes on (the Kafka JVM's compiler was at 0.02 s of the broker's 0.37 s
   after (2), against 0.71 of 1.28 s in (1)), so the runs of each kind are spread over the same stretch, and the
   means of each kind are compared: CPU per answered message of every process but the search index's PostgreSQL
   session (the aim), of the worker, of the projector and of every process;
2. latency: signed WhatsApp webhook deliveries sent open-loop at each rate of --rates (default --rate) for
   --seconds, each timed from its scheduled send time until it is visible: in the read model (one SQL
   probe for every delivery) and through GET /v1/conversations/{contact} (a sample, with a bounded GET
   budget); on the runtime with --latency-workers workers (default the first of --workers);
3. the real worker's fold rate (fold agent + effect runner, bench/fold_worker.py) over N pre-loaded records;
4. the naive Faust agent and the bare stream iteration (bench/faust_baselines.py) over the same records;
5. the Redis-lock peer (../shared/peers/redis_locks_peer.py, run where it lies, never copied) over the same
   N messages and contacts as (1), once, after Baton's services have stopped, when Redis (127.0.0.1:6379) and
   PostgreSQL (127.0.0.1:5432, database `test`, user postgres) answer (../shared/peers/services.sh starts
   them); otherwise one line says it was skipped. Its Python is a venv made once at .bench-peer-venv (redis[hiredis], psycopg[binary], psutil,
   uvloop, orjson from PyPI). --no-peer or --skip peer leaves it out.

Everything Baton runs is on the brokers and the one embedded PostgreSQL started here; every request goes to
127.0.0.1 and every loop is bounded in count and time. The worker(s) and API are the real `baton` roles; the
projector runs as bench/projector_probe.py (the real projector, batches timed).
Also printed, per broker: log records per inbound message, CPU per component (from /proc; worker-1..worker-N
each by pid, children included; the broker as "broker (tansu)" or "broker (kafka)", the JVM by pid), with
--profile py-spy the worker(s), projector and API sampled during (1) and the fold worker during (3); at the
end one table of Baton (one row per broker and worker count) against the peer: answered messages/s, CPU ms
per answered message (all of each system's processes), log records and broker CPU per answered message,
Baton ÷ peer; where the CPU goes per component; and issue 22's aims beside the figures, per broker.

Experiments (not the defaults): BATON_FETCH_WAIT_MS and other settings in the environment,
BENCH_GC=default (the fold worker in (3) without the worker's GC tuning),
--baseline-loglevel error (Faust's spinner puts the root logger at DEBUG).
"""
