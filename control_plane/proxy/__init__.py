"""The decision service the Rust data plane asks, and starting/stopping the data plane."""
