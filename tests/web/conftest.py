"""The lifecycle fixtures (the Connect pages over the use cases): the fake Sage over HTTP and a real warehouse."""

from tests.lifecycle_kit import lenv, sage  # noqa: F401 - pytest finds fixtures by their name here
