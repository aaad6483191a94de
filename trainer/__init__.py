"""The code that runs inside one task of a distributed training job.

Importing this package does not import TensorFlow; only `pml_trainer.__main__` and the modules it
loads for a role do, so the control plane can reuse `pml_trainer.options` and `pml_trainer.tf_config`.
"""
