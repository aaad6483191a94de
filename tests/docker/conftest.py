"""The Docker tier's daemon and image, one of each for the whole session: a fixture imported into
each test file would start a daemon per file, and the second finds the first's data root in use."""

from dockerd import docker_env, trainer_image  # noqa: F401 (fixtures)
