"""FID / KID / FD: feature extractors, streaming statistics, Frechet distance."""
