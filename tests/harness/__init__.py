"""Real services on loopback for the tests: S3 (moto server), MLflow, Ray, a media server."""
