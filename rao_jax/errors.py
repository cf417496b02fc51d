"""The error every layer raises for a configuration it cannot honour (a trainer config key, a model's
``config.json``, a layout that does not fit): ``ConfigError`` names the key and the problem."""


class ConfigError(ValueError):
    """A configuration rao_jax cannot run: the message names the offending key(s) and why."""
