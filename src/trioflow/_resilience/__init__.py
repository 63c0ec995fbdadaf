"""Resilience: rate limits, circuit breaker, hedging, health, adaptive limits, resilient()."""
