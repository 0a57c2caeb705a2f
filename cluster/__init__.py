"""Collection at cluster scale (Ray): `collect` (driver + finaliser), `ledger` (per-job outcome
records in the dataset's storage), `synthetic` (a no-training job for benchmarks and fault tests),
`seaweed` (a local S3 server), `bench`; example cluster files: ray-cluster.yaml, kuberay.yaml,
runtime_env.yaml."""
