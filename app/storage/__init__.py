"""Storage shared by gateway and workers: blobs (inputs, artifacts) and job records."""
