"""The input pipeline: reading image files (``images``), the CPU-path dataset (``datasets``), the
index-keyed samplers (``samplers``), the train/eval presets (``transforms``), the device-decode
path (``device_decode``), generated ImageFolder data (``synthetic``), and the loaders the config
asks for (``build``)."""
