"""Keras 3, on each of its frameworks: one package, the same module names as the other backends.

- :mod:`.tensorflow`: the ``keras`` backend, Keras on TensorFlow in this process;
- :mod:`.worker`: ``keras-torch`` and ``keras-jax``, Keras on PyTorch / JAX in a worker process of its own
  (Keras fixes its framework once per process), and the data-parallel workers;
- :mod:`.common`: models, losses, optimizers and the ``fit`` loop shared by both;
- :mod:`.network`: whole networks; :mod:`.parallel`: MirroredStrategy and keras.distribution.

Importing this package imports no framework.
"""
