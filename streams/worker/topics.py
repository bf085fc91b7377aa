"""Create the topics of SPEC §2 when they are missing (worker start, demo, tests)."""

from __future__ import annotations

import logging
from contextlib import suppress

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.keys import ALERTS_TOPIC, DEAD_LETTER_TOPIC, SOURCE_TOPICS, topic_name
from streams.retry import until_done
from streams.security import kafka_options
from streams.settings import Settings

log = logging.getLogger(__name__)


def all_topics(settings: Settings) -> list[str]:
    suffixes = (*SOURCE_TOPICS, DEAD_LETTER_TOPIC, ALERTS_TOPIC)
    return [topic_name(settings.topic_prefix, s) for s in suffixes]


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; return the ones created. Waits for the broker."""

    async def create() -> list[str]:
        admin = AIOKafkaAdminClient(**kafka_options(settings))
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in all_topics(settings) if t not in existing]
            if missing:
                with suppress(TopicAlreadyExistsError):  # another worker won the race
                    await admin.create_topics(
                        [NewTopic(t, settings.topic_partitions, 1) for t in missing]
                    )
                log.info("created topics %s", missing)
            return missing
        finally:
            await admin.close()

    return await until_done(create, max_backoff_s=settings.retry_max_backoff_s)
