"""Request lifecycles: state machine, requests, pipelines, router, tools, coordinator, config."""
