"""Workflows: the graph, a run and its journal, results, the run stores and their JSON codec."""
