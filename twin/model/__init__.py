"""Model preparation: configuration and random or trained weights (modelgen, train), importers of
other formats (importers/), tokenizers, the quantized image format (image), the host reference that
mirrors the firmware bit for bit (reference), accuracy per quantization scheme, and the memory fit
per platform (fit)."""
