-- The stats hash has one writer: the leader worker, on a timer
-- (streams/families/stats.py). It finds the days whose counters moved since
-- its last look by this column, which every counter upsert sets.
ALTER TABLE daily_counters ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
