"""What losses and miners share: distance matrices of a batch, and its pairs and triplets as index tuples."""
