"""Event triggers: sources of events (ticks, cron times, file changes) and ``run_on``."""
