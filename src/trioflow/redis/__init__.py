"""trioflow on Redis: request state shared by processes (``RedisRequestStore``)."""
