"""The study's two setups, as job-spec layers under the job file and the flags.

`fashion-mlp` is the study's sequential fashion_mnist network: Flatten -> Dense(128) -> Dense(10),
Adam, batch 32, five epochs. `flowers-cnn` is its flower network (three conv layers and a 64-unit
dense layer) on tf_flowers at 64x64x3 with random flips and contrast, Adam, batch 32. The study's
own flower run set steps_per_epoch to the number of images instead of images / batch size, so each
of its "epochs" was about 32 passes over the data; here an epoch is one pass.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "fashion-mlp": {
        "trainer": {
            "dataset": "fashion_mnist",
            "model": "mlp",
            "hidden_layers": 1,
            "neurons": 128,
            "batch_size": 32,
            "epochs": 5,
        }
    },
    # The study split tf_flowers 80/10/10; the loader keeps 10% for test, and 1/9 of the rest is 10%.
    "flowers-cnn": {
        "trainer": {
            "dataset": "flowers",
            "model": "cnn",
            "batch_size": 32,
            "epochs": 5,
            "validation_split": round(1 / 9, 4),
            "augment": True,
        }
    },
}
