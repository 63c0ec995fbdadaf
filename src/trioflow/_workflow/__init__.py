"""Workflows: the graph, a run and its journal, results, and the run stores."""
