"""The control plane: `pmlctl`. It must never import TensorFlow."""
