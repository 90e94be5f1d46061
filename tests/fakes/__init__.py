"""Stand-ins for outside services that tests, benchmarks and service tests run against."""
