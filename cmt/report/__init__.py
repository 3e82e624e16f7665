"""Records and results: MLflow ingestion, the paper's tables and plots."""
