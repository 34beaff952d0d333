"""The model registry: MLflow's own, embedded or reached by URI."""
