"""mnistlab: train, compare and use CNNs on MNIST-family images."""
