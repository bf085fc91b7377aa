-- Daily counters hold sums as well as counts (ai_latency_us: the day's
-- ai.response latency in microseconds). A bigint sum overflows after about
-- 1e8 events at the 24 h latency bound in one day, and an overflow would fail
-- every later event of that day: numeric cannot overflow. Counts and sums
-- stay whole numbers (the reader converts them to Python ints).
ALTER TABLE daily_counters ALTER COLUMN value TYPE numeric;
