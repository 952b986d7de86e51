"""batchrunner: Stripe Sigma query runs to typed Parquet at the pace the API allows."""
