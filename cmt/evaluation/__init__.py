"""Sample-quality metrics: the Frechet distance, the offline feature net's FD/KID, Inception FID."""
