-- consumer_positions holds the last offset stored per consumer group and
-- partition, while Kafka's "position" (and a committed offset) is the NEXT one
-- to read: the column says which it is.
ALTER TABLE consumer_positions RENAME COLUMN kafka_offset TO last_offset;
COMMENT ON COLUMN consumer_positions.last_offset IS
    'offset of the last message whose effects are stored; Kafka''s position is last_offset + 1';
