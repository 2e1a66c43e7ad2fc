"""The jobs: train, build_data, evaluate, tune, pretrain, demo, each with main(argv) and run() (its console script)."""
