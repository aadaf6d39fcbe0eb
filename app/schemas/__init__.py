"""Contracts shared by the gateway and the workers: jobs, results, manifests and problems."""
