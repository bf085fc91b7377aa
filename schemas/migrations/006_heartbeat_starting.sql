-- A worker writes its heartbeat row as soon as its connections are open,
-- before its web server and agents start, with starting = true; it turns
-- false once the worker consumes (its first partition assignment is done).
-- Without this the row of the previous run ("stopped", its old pid) was all
-- `rpcache check` and /dashboard saw until the first timer beat.
-- Rows written by a worker older than this column read as not starting.
ALTER TABLE worker_heartbeats ADD COLUMN starting boolean NOT NULL DEFAULT false;
